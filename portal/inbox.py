"""The reviewer inbox: pending tool approvals and held answers this reviewer may decide.

Every page asks `governance.approvals.reviewable` which items the reviewer may see; deciding
goes through `approval_decide` / `escalation_decide` (four-eyes, approver groups, expiry, the
audit event, the run resumed, all in one transaction). The list reloads itself when the
websocket says something arrived or was decided elsewhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.text import capfirst
from django.views.decorators.http import require_http_methods

from agents.models import Agent, Message, MessageRole
from agents.provenance import approval_provenance
from agents.selectors import HIDDEN, UNREAD_RELEASE, unreadable_sources
from audit.models import AuditEvent
from audit.pii import as_seen_by, hash_key, pseudonymise_parts, sees_values
from governance.approvals import (
    ApprovalError,
    approval_decide,
    approvals_for,
    escalation_decide,
    escalations_for,
    reviewable,
)
from governance.guardrails.output import render_markdown
from governance.models import ApprovalRequest, Escalation
from governance.policy import reason_text
from integrations.inputs import unstorable, unstorable_at
from tools.models import RiskTier, Tool

AGES = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
AGE_LABELS = {"": "any age", "15m": "over 15 minutes", "1h": "over an hour", "1d": "over a day"}


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
    approval_list, answer_list = list(approvals), list(answers)
    agent_ids = {a.agent_id for a in approval_list} | {e.agent_id for e in answer_list}
    agents = dict(Agent.objects.filter(pk__in=agent_ids).values_list("pk", "name"))
    risks = dict(
        Tool.objects.filter(pk__in={a.tool_id for a in approval_list}).values_list("pk", "risk")
    )
    items = sorted(
        [_row(a, "approval", agents, risks.get(a.tool_id, "")) for a in approval_list]
        + [_row(e, "answer", agents, "") for e in answer_list],
        key=lambda row: row["created_at"],
    )
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
    }
    return {key: v if (v := query.get(key, "")) and ok(v) else "" for key, ok in valid.items()}


def _row(item, kind: str, agents: dict, risk: str) -> dict:
    return {
        "kind": kind,
        "pk": item.pk,
        # None: an MCP client called the tool itself (a run of no agent)
        "agent": "MCP client"
        if item.agent_id is None
        else agents.get(item.agent_id, f"agent {item.agent_id}"),
        "tool": getattr(item, "tool_name", ""),
        "risk": risk,
        "requested_by": item.requested_by.get_username(),
        "reasons": [reason_text(r) for r in getattr(item, "reasons", None) or []],
        "created_at": item.created_at,
        "confidence": getattr(item, "confidence", None),
    }


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
            # Hashed for a reviewer (approval_decide puts the values back into an edit that
            # keeps the hashes); the tool gets the stored arguments.
            "arguments": json.dumps(shown(request_.arguments), indent=2, ensure_ascii=False),
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
