"""The reviewer inbox: pending tool approvals and held answers this reviewer may decide.

Every page asks `governance.approvals.reviewable` which items the reviewer may see; deciding
goes through `approval_decide` / `escalation_decide` (four-eyes, approver groups, expiry, the
audit event, the run resumed, all in one transaction). The list reloads itself when the
websocket says something arrived or was decided elsewhere.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import replace
from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator, capfirst
from django.views.decorators.http import require_http_methods

from agents.models import Agent, Message, MessageRole, RunStep
from agents.provenance import approval_provenance
from agents.selectors import HIDDEN, UNREAD_RELEASE, unreadable_sources
from audit.models import AuditEvent
from audit.pii import as_seen_by, hash_key, pseudonymise_parts, sees_values
from governance.approvals import (
    BULK_LIMIT,
    HELD_ANSWER_SINGLY,
    ApprovalError,
    approval_decide,
    approvals_for,
    bulk_refusal,
    escalation_decide,
    escalations_for,
    reviewable,
    reviews_decide,
)
from governance.guardrails.output import render_markdown
from governance.models import ApprovalRequest, Escalation
from governance.policy import reason_text
from integrations.inputs import unstorable, unstorable_at
from tools.models import RiskTier, Tool

AGES = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
AGE_LABELS = {"": "any age", "15m": "over 15 minutes", "1h": "over an hour", "1d": "over a day"}
# Why an item waits, as the rows and the reason filter name it.
WHY = {
    "risk": "the tool's risk or approval setting",
    "untrusted": "it follows untrusted content",
    "injection": "it read what looked like an injection",
    "guardrail": "a guardrail asked",
    "confidence": "low confidence (held answers)",
}
PREVIEW_CHARS = 120
# Notes a decision carries that sent nothing here (governance.policy): left out of "why".
_NOTES = frozenset({"tool.approval_never", "tool.risk_read"})


def pending_count(user) -> int:
    return approvals_for(user).count() + escalations_for(user).count()


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    filters = _filters(request.GET)
    approvals = approvals_for(request.user).select_related("requested_by")
    answers = escalations_for(request.user).select_related("requested_by")
    if filters["agent"]:
        approvals = approvals.filter(agent_id=filters["agent"])
        answers = answers.filter(agent_id=filters["agent"])
    if filters["tool"]:
        approvals = approvals.filter(tool_name=filters["tool"])
    if filters["risk"]:
        approvals = approvals.filter(
            tool_id__in=Tool.objects.filter(risk=filters["risk"]).values("pk")
        )
    if filters["age"]:
        before = timezone.now() - AGES[filters["age"]]
        approvals = approvals.filter(created_at__lte=before)
        answers = answers.filter(created_at__lte=before)
    if filters["kind"] == "approval" or filters["tool"] or filters["risk"]:
        answers = answers.none()  # a held answer has no tool and no risk tier
    elif filters["kind"] == "answer":
        approvals = approvals.none()
    if filters["reason"] == "confidence":
        approvals = approvals.none()
    elif filters["reason"]:
        answers = answers.none()  # a held answer waits for its confidence only
    approval_list, answer_list = list(approvals), list(answers)
    agent_ids = {a.agent_id for a in approval_list} | {e.agent_id for e in answer_list}
    agents = dict(Agent.objects.filter(pk__in=agent_ids).values_list("pk", "name"))
    risks = dict(
        Tool.objects.filter(pk__in={a.tool_id for a in approval_list}).values_list("pk", "risk")
    )
    flagged = _flagged_reads(approval_list)
    viewer = request.user.pk
    items = sorted(
        [
            _approval_row(a, agents, risks.get(a.tool_id), flagged.get(a.key, False), viewer)
            for a in approval_list
        ]
        + [_answer_row(e, agents, viewer) for e in answer_list],
        key=lambda row: row["created_at"],
    )
    if filters["reason"]:
        items = [row for row in items if filters["reason"] in row["why_kinds"]]
    context = {"items": items, "filters": filters, "filtered": any(filters.values())}
    if request.GET.get("part"):  # the list alone, as the page's script refreshes it
        return render(request, "portal/_inbox_items.html", context)
    everything = approvals_for(request.user)
    waiting_on = Q(pk__in=everything.values("agent_id")) | Q(
        pk__in=escalations_for(request.user).values("agent_id")
    )
    context |= {
        "agent_choices": Agent.objects.filter(waiting_on).values_list("pk", "name"),
        "tool_choices": sorted(set(everything.values_list("tool_name", flat=True))),
        "risk_choices": RiskTier.choices,
        "age_choices": AGE_LABELS.items(),
        "reason_choices": WHY.items(),
        "bulk_limit": BULK_LIMIT,
        "query": _inbox_url(filters).partition("?")[2],
    }
    return render(request, "portal/inbox.html", context)


def _filters(query) -> dict[str, str]:
    """The filters asked for; a value that is not one of the choices is no filter."""
    valid = {
        "kind": lambda v: v in ("approval", "answer"),
        "agent": lambda v: re.fullmatch(r"[0-9]{1,18}", v) is not None,
        "tool": lambda v: len(v) <= 64 and "\x00" not in v,
        "risk": lambda v: v in RiskTier.values,
        "age": lambda v: v in AGES,
        "reason": lambda v: v in WHY,
    }
    return {key: v if (v := query.get(key, "")) and ok(v) else "" for key, ok in valid.items()}


def _flagged_reads(approvals: list[ApprovalRequest]) -> dict[str, bool]:
    """For each request's call key: whether something the run had read before the call looked
    like a prompt injection (the reads its approval step recorded: agents.provenance), in one
    query."""
    tainted = [a for a in approvals if any(r.startswith("provenance.") for r in a.reasons)]
    if not tainted:
        return {}
    steps = RunStep.objects.filter(
        run_id__in={a.run_id for a in tainted},
        kind="approval",
        input__key__in=[a.key for a in tainted],
    ).values_list("input__key", "output__provenance")
    return {
        key: any(read.get("flagged") for read in reads or [] if isinstance(read, dict))
        for key, reads in steps
    }


def _preview(value, *, owner_id: int, viewer_id: int | None) -> str:
    """A short, one-line view of `value` (a call's arguments, a question) as the reviewer may
    see it: personal values hashed (pii.as_seen_by)."""
    seen = as_seen_by(value, viewer_id=viewer_id, owner_id=owner_id)
    text = seen if isinstance(seen, str) else json.dumps(seen, ensure_ascii=False)
    return Truncator(" ".join(text.split())).chars(PREVIEW_CHARS)


def _agent_name(item, agents: dict) -> str:
    if item.agent_id is None:  # an MCP client called the tool itself (a run of no agent)
        return "MCP client"
    return agents.get(item.agent_id, f"agent {item.agent_id}")


def _approval_row(
    item: ApprovalRequest, agents: dict, risk: str | None, flagged: bool, viewer: int | None
) -> dict:
    why = []  # (kind, text)
    for reason in item.reasons or []:
        if reason in _NOTES:
            continue
        if reason.startswith("provenance."):
            why.append(("untrusted", reason_text(reason)))
        elif reason.startswith("guardrail."):
            why.append(("guardrail", reason_text(reason)))
        elif reason.startswith("tool."):
            why.append(("risk", reason_text(reason)))
        else:
            why.append(("other", reason_text(reason)))
    if flagged:
        why.append(("injection", "something it read looked like a prompt injection"))
    if not why:
        why.append(("risk", "the tool's policy asks for approval"))
    return {
        "kind": "approval",
        "pk": item.pk,
        "agent": _agent_name(item, agents),
        "tool": item.tool_name,
        "risk": risk or "",
        # The requester is the run's actor (approval_request_create): the owner of its data.
        "preview": _preview(item.arguments, owner_id=item.requested_by_id, viewer_id=viewer),
        "requested_by": item.requested_by.get_username(),
        "why": why,
        "why_kinds": {kind for kind, _ in why},
        "bulk_refusal": bulk_refusal(reasons=item.reasons or [], risk=risk),
        "created_at": item.created_at,
    }


def _answer_row(item: Escalation, agents: dict, viewer: int | None) -> dict:
    why = [("confidence", f"low confidence: {item.confidence} (the agent asks {item.threshold})")]
    return {
        "kind": "answer",
        "pk": item.pk,
        "agent": _agent_name(item, agents),
        "tool": "",
        "risk": "",
        "preview": _preview(item.question, owner_id=item.requested_by_id, viewer_id=viewer),
        "requested_by": item.requested_by.get_username(),
        "why": why,
        "why_kinds": {"confidence"},
        "bulk_refusal": HELD_ANSWER_SINGLY,
        "created_at": item.created_at,
    }


_ITEM = re.compile(r"(approval|answer)-([0-9]{1,18})")


@login_required
@require_http_methods(["POST"])
def inbox_bulk(request: HttpRequest) -> HttpResponse:
    """Approve or reject the selected rows at once (governance.approvals.reviews_decide: each
    item through the single decision's service; what the policy keeps for its own page is
    refused, saying why). The summary comes back as messages on the inbox, filters kept."""
    back = _inbox_url(_filters(QueryDict(request.POST.get("back", ""))))
    decision = request.POST.get("decision")
    comment = request.POST.get("comment", "")
    chosen = request.POST.getlist("item")
    try:
        _check({"comment": comment}, decision, ("approve", "reject"))
        found = [_ITEM.fullmatch(value) for value in chosen]
        if not all(found):
            raise ApprovalError("the selection holds something that is not an inbox item")
        picked = [(m.group(1), int(m.group(2))) for m in found if m is not None]
        outcome = reviews_decide(
            approvals=[pk for kind, pk in picked if kind == "approval"],
            escalations=[pk for kind, pk in picked if kind == "answer"],
            decided_by=request.user,
            approve=decision == "approve",
            comment=comment,
        )
    except ApprovalError as exc:
        messages.error(request, capfirst(str(exc)) + ".")
        return redirect(back)
    labels = _labels(request.user, outcome)
    verb = "Approved" if decision == "approve" else "Rejected"
    if outcome.decided:
        named = ", ".join(labels[_kind(item), item.pk] for item in outcome.decided)
        messages.success(request, f"{verb} {len(outcome.decided)}: {named}.")
    for kind, pk, why in outcome.refused:
        label = labels.get((kind, pk), f"#{pk}")
        messages.error(request, f"Not {verb.lower()}, left as it was: {label}: {why}.")
    return redirect(back)


def _inbox_url(filters: dict[str, str]) -> str:
    query = urlencode({k: v for k, v in filters.items() if v})
    return reverse("inbox") + (f"?{query}" if query else "")


def _kind(item: ApprovalRequest | Escalation) -> str:
    return "approval" if isinstance(item, ApprovalRequest) else "escalation"


def _labels(user, outcome) -> dict[tuple[str, int], str]:
    """How the summary names each item: only those the reviewer may see (reviewable) by what
    they are; any other by its number alone, as missing and forbidden look the same."""
    ids: dict[str, set[int]] = {"approval": set(), "escalation": set()}
    for item in outcome.decided:
        ids[_kind(item)].add(item.pk)
    for kind, pk, _ in outcome.refused:
        ids[kind].add(pk)
    labels = {}
    for request_ in (
        reviewable(ApprovalRequest, user)
        .filter(pk__in=ids["approval"])
        .select_related("requested_by")
    ):
        labels["approval", request_.pk] = (
            f"{request_.tool_name} #{request_.pk} (asked by {request_.requested_by.get_username()})"
        )
    for held in (
        reviewable(Escalation, user).filter(pk__in=ids["escalation"]).select_related("requested_by")
    ):
        labels["escalation", held.pk] = (
            f"held answer #{held.pk} (for {held.requested_by.get_username()})"
        )
    return labels


@login_required
@require_http_methods(["GET", "POST"])
def approval_page(request: HttpRequest, pk: int) -> HttpResponse:
    request_ = reviewable(ApprovalRequest, request.user).filter(pk=pk).first()
    if request_ is None:
        raise Http404("no such approval request")
    typed = {"arguments": "", "comment": ""}
    if request.method == "POST":
        typed = {k: request.POST.get(k, "") for k in typed}
        decision = request.POST.get("decision")
        try:
            _check(typed, decision, ("approve", "reject"))
            arguments = None
            if decision == "approve" and typed["arguments"].strip():
                arguments = _json_object(typed["arguments"])
            approval_decide(
                approval_id=pk,
                decided_by=request.user,
                approve=decision == "approve",
                arguments=arguments,
                comment=typed["comment"],
            )
        except ApprovalError as exc:
            messages.error(request, capfirst(str(exc)))
        else:
            verb = "Approved" if decision == "approve" else "Rejected"
            messages.success(request, f"{verb}: {request_.tool_name} for {request_.requested_by}.")
            return redirect("inbox")
        request_.refresh_from_db()
    tool = Tool.objects.filter(pk=request_.tool_id).first()
    context = _context_of(request_.run_id, request.user)
    shown = context.pop("shown")
    # Hashed for a reviewer (approval_decide puts the values back into an edit that keeps the
    # hashes); the tool gets the stored arguments. The edit box starts as the call was asked:
    # sent back unchanged, it approves the call as asked.
    asked = _pretty(shown(request_.arguments))
    if request.method != "POST":
        typed["arguments"] = asked
    approved_diff = []
    if request_.edited and request_.approved_arguments is not None:
        approved_diff = _diff(asked, _pretty(shown(request_.approved_arguments)))
    # Where the call came from: the untrusted content the model had read.
    provenance = approval_provenance(run_id=request_.run_id, key=request_.key, user=request.user)
    # A tool's output that came from a knowledge base (knowledge_search): hidden as a passage is.
    _, unreadable = unreadable_sources(request.user, {s.read["run"] for s in provenance})
    provenance = [
        replace(s, parts=[], hidden=True)
        if (s.read["run"], s.read["step"]) in unreadable and s.read.get("n") is None
        else s
        for s in provenance
    ]
    if not context["sees_values"]:
        key = hash_key()
        provenance = [replace(s, parts=pseudonymise_parts(s.parts, key=key)) for s in provenance]
    return render(
        request,
        "portal/approval.html",
        {
            "item": request_,
            "tool": tool,
            "arguments": asked,
            "edit_rows": min(max(len(asked.splitlines()) + 1, 4), 24),
            "approved_diff": approved_diff,
            "reasons": [reason_text(r) for r in request_.reasons],
            "typed": typed,
            "provenance": provenance,
            **context,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def answer_page(request: HttpRequest, pk: int) -> HttpResponse:
    escalation = reviewable(Escalation, request.user).filter(pk=pk).first()
    if escalation is None:
        raise Http404("no such held answer")
    context = _context_of(escalation.run_id, request.user)
    shown = context.pop("shown")
    hidden = context["hidden"]
    # A reviewer reads and edits the answer hashed; escalation_decide puts the values back.
    typed = {"answer": "" if hidden else shown(escalation.answer), "comment": ""}
    if request.method == "POST":
        typed = {k: request.POST.get(k, "") for k in typed}
        release = request.POST.get("decision") == "release"
        try:
            _check(typed, request.POST.get("decision"), ("release", "reject"))
            if release and hidden:
                raise ApprovalError(UNREAD_RELEASE)
            escalation_decide(
                escalation_id=pk,
                decided_by=request.user,
                release=release,
                answer=typed["answer"] if release else None,
                comment=typed["comment"],
            )
        except ApprovalError as exc:
            messages.error(request, capfirst(str(exc)))
        else:
            verb = "Released" if release else "Rejected"
            messages.success(request, f"{verb}: the answer for {escalation.requested_by}.")
            return redirect("inbox")
        escalation.refresh_from_db()
    return render(
        request,
        "portal/answer.html",
        {
            "item": escalation,
            "question": shown(escalation.question),
            "answer_html": "" if hidden else render_markdown(shown(escalation.answer)),
            "hidden_text": HIDDEN,
            "typed": typed,
            **context,
        },
    )


def _pretty(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _diff(before: str, after: str) -> list[tuple[str, str]]:
    """The lines of `after` against `before`, each (" ", "-" or "+", the line)."""
    lines = difflib.ndiff(before.splitlines(), after.splitlines())
    return [(line[0], line[2:]) for line in lines if line[0] in " -+"]


def _check(typed: dict, decision, choices: tuple[str, str]) -> None:
    if decision not in choices:
        raise ApprovalError(f"choose {' or '.join(choices)}")
    for name, value in typed.items():
        if problem := unstorable(value):
            raise ApprovalError(f"the {name} cannot be kept: {problem}")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ApprovalError(f"the edited arguments are not JSON: {exc}") from None
    except RecursionError:
        raise ApprovalError("the edited arguments are nested too deeply") from None
    if not isinstance(value, dict):
        raise ApprovalError("the edited arguments must be a JSON object")
    # A NUL or an unpaired surrogate written as a JSON escape: valid JSON, but no database
    # (jsonb, UTF-8) keeps it.
    if found := unstorable_at(value, "arguments"):
        where, problem = found
        raise ApprovalError(f"the edited arguments cannot be kept: {where} {problem}")
    return value


def _context_of(run_id: int, user) -> dict:
    """What the reviewer reads beside the decision: the conversation up to the run and the
    run's audit trail, with `shown`, which gives a value of the run as `user` may see it
    (personal data hashed unless `user` owns the run: pii.as_seen_by). An answer drawn from a
    knowledge base `user` may not read is HIDDEN, and `hidden` says whether the run's own is:
    the one rule of the run trace (agents.selectors.unreadable_sources)."""
    from agents.models import Run

    run = Run.objects.select_related("agent", "actor", "conversation").filter(pk=run_id).first()
    owner_id = run.actor_id if run is not None else None

    def shown(value):
        return as_seen_by(value, viewer_id=user.pk, owner_id=owner_id)

    messages_ = []
    if run is not None and run.conversation_id is not None:  # (an MCP client's call has none)
        messages_ = list(
            Message.objects.filter(
                conversation_id=run.conversation_id,
                role__in=[MessageRole.USER, MessageRole.ASSISTANT],
                created_at__lte=run.created_at + timedelta(seconds=1),
            )
            .exclude(content="")
            .order_by("-created_at")[:10]
        )[::-1]
    # The user's own words are theirs; an assistant's are its run's, from what the run read.
    runs = {m.run_id for m in messages_ if m.role == MessageRole.ASSISTANT} | {run_id}
    hidden_runs, _ = unreadable_sources(user, runs - {None})
    conversation = [
        {"role": m.role, "content": HIDDEN, "hidden": True}
        if m.role == MessageRole.ASSISTANT and m.run_id in hidden_runs
        else {"role": m.role, "content": shown(m.content)}
        for m in messages_
    ]
    trail = [
        {
            "time": event.time,
            "action": event.action,
            "actor_label": shown(event.actor_label),
            "target_label": shown(event.target_label),
        }
        for event in AuditEvent.objects.filter(run=str(run_id)).order_by("sequence")[:200]
    ]
    return {
        "run": run,
        "conversation": conversation,
        "trail": trail,
        "shown": shown,
        "sees_values": sees_values(viewer_id=user.pk, owner_id=owner_id),
        "hidden": run_id in hidden_runs,
    }
