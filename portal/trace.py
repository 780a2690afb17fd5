"""One page per run: its steps with timings, tokens and cost, the deployment that served each
model step (and the fallbacks tried first), the passages it retrieved, the policy's decisions,
approvals and held answers, and the audit events behind them."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from agents.evaluation.owners import evaluation_agents
from agents.feedback import feedback_of
from agents.models import KnowledgeBase, StepKind
from agents.selectors import access_run
from audit.models import AuditEvent
from audit.pii import as_seen_by, sees_values
from governance.access import NoAccess
from governance.models import Action, ApprovalRequest, Escalation


@login_required
@require_GET
def run_trace(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        run = access_run(request.user, pk, trace=True)
    except NoAccess:
        raise Http404("no such run") from None
    steps = [_step(step) for step in run.steps.order_by("index")]
    question, error = run.input, run.error
    owner = {"viewer_id": request.user.pk, "owner_id": run.actor_id}
    if not sees_values(**owner):
        _hide_unreadable(steps, request.user)
        # The run is its owner's: others (reviewers, auditors) see personal data as the audit
        # trail keeps it, a keyed hash.
        question, error = as_seen_by(question, **owner), as_seen_by(error, **owner)
        for row in steps:
            row["summary"] = as_seen_by(row["summary"], **owner)
            row["passages"] = [
                {**p, "text": as_seen_by(p["text"], **owner)} if p.get("text") else p
                for p in row["passages"]
            ]
    events = list(AuditEvent.objects.filter(run=str(run.pk)).order_by("sequence")[:500])
    # The agents it asked (delegation): their runs, and the reviews they wait for, here too.
    children = list(run.children.select_related("agent").order_by("pk"))
    decisions = []
    for event in events:
        if event.action == "policy.decided":
            data = json.loads(event.data)
            decisions.append({"event": event, "data": data})
    # What people said of the answer: the agent's owners read all of it, the asker their own;
    # personal data in another's comment as the audit trail keeps it.
    feedback = [
        {
            "item": item,
            "comment": as_seen_by(item.comment, viewer_id=request.user.pk, owner_id=item.author_id),
        }
        for item in feedback_of(request.user, run)
    ]
    return render(
        request,
        "portal/trace.html",
        {
            "run": run,
            "question": question,
            "error": error,
            "steps": steps,
            "decisions": decisions,
            "children": children,
            "approvals": ApprovalRequest.objects.filter(
                run_id__in=[run.pk, *(c.pk for c in children)]
            )
            .select_related("decided_by")
            .order_by("created_at"),
            "escalations": Escalation.objects.filter(
                run_id__in=[run.pk, *(c.pk for c in children)]
            ).select_related("decided_by"),
            "events": events,
            "feedback": feedback,
            # The agent's owners may turn a rated question into an evaluation case.
            "to_evaluation": bool(feedback)
            and request.user.is_staff
            and run.agent_id is not None
            and evaluation_agents(request.user).filter(pk=run.agent_id).exists(),
            "audit_links": request.user.has_perm("audit.view_auditevent"),
            "version_url": _version_url(request.user, run),
        },
    )


def _version_url(user, run) -> str | None:
    """The admin's page of the version that served the run, for staff who may see the agent
    there."""
    if run.version_id is None or not user.is_staff:
        return None
    if not (user.has_perm("agents.view_agent") or user.has_perm("agents.change_agent")):
        return None
    return reverse("admin:agents_agent_version", args=[run.agent_id, run.version_id])


def _hide_unreadable(steps: list[dict], user) -> None:
    """A reviewer or an auditor sees the run, but a passage's text only from a knowledge base
    they may read themselves."""
    readable = set(KnowledgeBase.objects.restrict(user, Action.READ).values_list("pk", flat=True))
    for row in steps:
        row["passages"] = [
            p if p.get("knowledge_base") in readable else {**p, "text": None, "title": None}
            for p in row["passages"]
        ]


def _step(step) -> dict:
    output = step.output or {}
    row = {
        "step": step,
        "ms": round((step.finished_at - step.started_at).total_seconds() * 1000),
        "tokens": step.prompt_tokens + step.completion_tokens,
        "summary": "",
        "fallbacks": [],
        "passages": [],
    }
    if step.kind == StepKind.MODEL:
        calls = output.get("tool_calls") or []
        row["summary"] = ", ".join(f"calls {c['name']}" for c in calls) or "answers"
        if hit := output.get("answer_cache"):  # agents.answer_cache: no model asked
            row["summary"] = (
                f"answers from the answer cache ({hit['tier']} question, similarity "
                f"{hit['similarity']}, {hit['tokens_saved']} tokens saved)"
            )
        row["fallbacks"] = output.get("fallbacks") or []
        row["cached"] = output.get("cached", False)
        row["confidence"] = output.get("confidence")
    elif step.kind == StepKind.TOOL:
        call = step.input.get("call", {})
        row["summary"] = f"{call.get('name', '')}: " + (
            output.get("error") or ("ok" if step.status == "ok" else step.status)
        )
    elif step.kind == StepKind.APPROVAL:
        row["summary"] = f"approval request {output.get('approval')}: " + ", ".join(
            output.get("reasons", [])
        )
    elif step.kind == StepKind.DELEGATION:
        row["summary"] = f"asked {output.get('agent', '')}: run {output.get('run')}"
        row["child"] = output.get("run")
    elif step.kind == StepKind.RETRIEVAL:
        row["passages"] = output.get("passages", [])
        row["summary"] = f"{len(row['passages'])} passages"
    return row
