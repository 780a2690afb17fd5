"""Runs: starting, cancelling, leasing and checkpointing (DESIGN.md §3 and §4).

The orchestrator (agents/orchestrator.py) drives a run step by step through these writes. Every
write a worker makes after taking the lease goes through `run_checkpoint`, which locks the run
row and checks the fencing token first: a worker whose lease was taken over can never write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from agents.events import publish, publish_group
from agents.models import (
    FINAL_STATES,
    Agent,
    AgentVersion,
    Conversation,
    Message,
    MessageRole,
    Run,
    RunKind,
    RunState,
    RunStep,
)
from agents.signals import run_state_send
from agents.versions import VersionError, version_agent, version_serving
from audit.services import (
    Target,
    append_arguments,
    append_call,
    audit_draft,
    audit_record,
    audit_record_drafts,
)
from governance import ratelimits
from governance.approvals import reviews_withdraw
from governance.budgets import budget_refusal, budget_state
from governance.guardrails.injection import injection_verdict
from governance.guardrails.output import scan as output_scan
from governance.policy import Decision, Facts, Verdict, VerdictAction, decide, explain
from governance.residency import regions_allowed
from governance.snapshot import governance_snapshot
from telemetry import guardrail_found, metrics, tracing
from tools.db import raw_cursor
from tools.ledger import LedgerShare
from tools.schemas import text_problem

logger = logging.getLogger(__name__)


MAX_INPUT = 20_000  # characters of one message, on every surface (the chat's box too)
MCP_LABEL = "(mcp)"  # the `agent` label, in the metrics, of an MCP client's own tool calls


class RunError(Exception):
    """A run cannot be started or changed; the message is for the person who asked. `code`
    names the kind for good: integrations.api.problems maps each code to its answer (a problem
    document, OpenAI's error, the chat's status), once for every surface."""

    code = "run_refused"


class InputRefused(RunError):
    """The message cannot be a run's input."""

    code = "input_refused"


class EmptyInput(InputRefused):
    code = "input_empty"


class InputTooLong(InputRefused):
    code = "input_too_long"


class UnstorableInput(InputRefused):
    """A NUL or an unpaired surrogate: PostgreSQL cannot keep it (tools.schemas.text_problem)."""

    code = "input_unstorable"


class ConversationNotFound(RunError):
    """Not the actor's conversation with this agent, or none: missing and forbidden alike."""

    code = "conversation_not_found"

    def __init__(self, message: str = "no such conversation") -> None:
        super().__init__(message)


class IdempotencyKeyInvalid(RunError):
    code = "idempotency_key_invalid"


class RunDenied(RunError):
    """The policy refused to start the run; the message says why, for the person asking."""

    code = "policy_denied"

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(message)
        self.decision = decision

    @staticmethod
    def of(message: str, decision: Decision) -> RunDenied:
        """The refusal's kind, by the reason that decides what the asker is told."""
        reasons = decision.reasons
        if "agent.forbidden" in reasons:  # as the policy says it: missing and forbidden alike
            return AgentForbidden(message, decision)
        if "budget.exhausted" in reasons:
            return BudgetExhausted(message, decision)
        if any(reason.startswith("guardrail.") for reason in reasons):
            return GuardrailBlocked(message, decision)
        return RunDenied(message, decision)


class AgentForbidden(RunDenied):
    code = "agent_forbidden"


class BudgetExhausted(RunDenied):
    code = "budget_exhausted"


class GuardrailBlocked(RunDenied):
    code = "guardrail_blocked"


class RateLimited(RunError):
    """Too many runs in the current minute; `retry_after` says when the next one may start."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyConflict(RunError):
    """The idempotency key was used before for another request; `run` is the run it started."""

    code = "idempotency_conflict"

    def __init__(self, message: str, run: Run) -> None:
        super().__init__(message)
        self.run = run


class LeaseLost(Exception):
    """Another worker holds the run now: stop without writing anything more."""


def lease_seconds() -> int:
    return settings.WARDEN_RUN_LEASE_SECONDS


def run_start(
    *,
    agent: Agent,
    conversation: Conversation,
    actor,
    input: str,
    idempotency_key: str = "",
    fingerprint: str = "",
    stream: bool = True,
    client_application_id: int | None = None,
    here: bool = False,
    kind: str = RunKind.AGENT,
    client: str = "",
    parent: Run | None = None,
    version: AgentVersion | None = None,
    sandbox: bool = False,
) -> Run:
    """Queue a run of `agent` on the actor's message, once it passes `input_check` (interfaces
    come through agents.submit.run_submit, which finds or makes the conversation and scopes
    the idempotency key, then calls this). The same idempotency key returns the
    run it started before instead of a second one, if `fingerprint` (a digest of the request)
    is the same too, and raises IdempotencyConflict if not. `stream` publishes the run's steps
    and the answer's tokens to its channel group as they happen (for somebody watching live).
    An unsaved `conversation` is saved with the run (so a refusal leaves no empty one behind).
    `client_application_id` names the OAuth2 application that asked, if one did; `kind` who
    asked (RunKind: an MCP client, named `client`, or the `parent` run's agent). `here`: the
    caller waits for the answer in this process, so a run that can only answer
    (agents.orchestrator.runs_here decides) is advanced on a thread here instead of by a
    worker; the run's `done` is then an event set once that thread is done with it.

    `version` and `sandbox` are an evaluation's alone (agents.evaluation): the run is served
    by that version of the agent, whatever is live or released, and its tool calls are
    recorded, never executed (Run.sandbox).

    The policy decision point decides first (governance.policy); a denial is audited and
    raised as a RunDenied of its kind (RunDenied.of), and nothing else is written."""
    if conversation.owner_id != actor.pk or conversation.agent_id != agent.pk:
        raise ConversationNotFound()  # missing and forbidden look the same
    input_check(input)
    if idempotency_key:
        existing = run_idempotent(actor, idempotency_key, fingerprint)
        if existing is not None:
            return existing
    # The version that serves the run: it decides what the run does from here on.
    if version is None:
        saved = conversation if conversation.pk else None
        version = version_serving(agent=agent, conversation=saved)
    elif version.agent_id != agent.pk:
        raise VersionError(f"v{version.number} is not a version of {agent.name}")
    agent = version_agent(agent, version)
    # The run's trace begins here, under the request's span if there is one.
    with tracing.run_started("start run", {"warden.agent": agent.slug}) as trace_parent:
        decision, context = _start_decision(agent=agent, actor=actor, input=input)
        if here and settings.WARDEN_FAST_PATH_RUNS:  # (0: the fast path is off, nothing to ask)
            from agents.orchestrator import runs_here

            here = runs_here(agent, actor, conversation.pk)
        try:
            run = _queued(
                agent,
                conversation,
                actor,
                input,
                decision,
                context,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
                stream=stream,
                client_application_id=client_application_id,
                here=here,
                trace_parent=trace_parent,
                kind=kind,
                client=client[:200],
                parent=parent,
                version=version,
                sandbox=sandbox,
            )
        except IntegrityError:
            # The same key, at the same moment, from a concurrent request: its run is the answer.
            existing = (
                run_idempotent(actor, idempotency_key, fingerprint) if idempotency_key else None
            )
            if existing is None:
                raise
            return existing
    metrics.RUNS_STARTED.labels(agent=agent.slug).inc()
    return run


def _start_decision(*, agent: Agent, actor, input: str) -> tuple[Decision, RunContext]:
    """The policy's yes to starting the run, once the agent's rate limits allow it too, and
    what it was decided on. A no is audited (in its own transaction: nothing else is written)
    and raised as a RunDenied of its kind."""
    context = run_context(actor=actor, agent=agent, input=input)
    decision = decide(context.facts)
    for verdict in context.facts.verdicts:  # counted here, once a message (not per decision)
        if verdict.action != VerdictAction.PASS:
            guardrail_found(verdict.guardrail, where="input", action=str(verdict.action))
    if decision.allowed:
        _rate_limit(agent, actor)
        return decision, context
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="policy.decided",
            target=Target.of(agent),
            data={"on": "run.start", **_decided(decision, context)},
        )
    message = explain(decision, agent=agent.name)
    if "budget.exhausted" in decision.reasons and "agent.forbidden" not in decision.reasons:
        message = budget_refusal(budget_ids=context.budget_ids)
        metrics.BUDGET_REFUSALS.labels(on="start").inc()
    raise RunDenied.of(message, decision)


def input_check(text: str) -> None:
    """Refuse a message no run may take: empty, longer than MAX_INPUT, or holding text
    PostgreSQL cannot keep."""
    if not text.strip():
        raise EmptyInput("the message is empty")
    if len(text) > MAX_INPUT:
        raise InputTooLong(f"the message is longer than {MAX_INPUT} characters")
    if problem := text_problem(text):
        raise UnstorableInput(f"the message {problem}")


def run_idempotent(actor, key: str, fingerprint: str) -> Run | None:
    existing = Run.objects.filter(actor=actor, idempotency_key=key).first()
    if existing is not None and existing.idempotency_fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"the idempotency key was used for another request (run {existing.pk})", existing
        )
    if existing is not None:
        existing.replayed = True  # for the caller: this is the earlier request's run
    return existing


def _queued(agent, conversation, actor, input, decision, context, **fields):
    with transaction.atomic():
        if conversation.pk is None:  # a new conversation exists only with its first run
            conversation.save()
        else:  # a new message is activity: the conversation comes first in its owner's list
            conversation_touch(conversation_id=conversation.pk)
        run = Run.objects.create(
            agent=agent,
            conversation=conversation,
            actor=actor,
            input=input,
            idempotency_key=fields["idempotency_key"],
            idempotency_fingerprint=fields["fingerprint"],
            stream=fields["stream"],
            client_application_id=fields["client_application_id"],
            trace_parent=fields["trace_parent"],
            kind=fields["kind"],
            client=fields["client"],
            parent=fields["parent"],
            version=fields["version"],
            sandbox=fields["sandbox"],
        )
        Message.objects.create(
            conversation=conversation, run=run, role=MessageRole.USER, content=input
        )
        about = {
            "actor": actor,
            "target": Target.of(run),
            "run": run.pk,
            "conversation": conversation.pk,
        }
        audit_record_drafts(
            [
                audit_draft(action="run.queued", data=_queued_data(agent, fields), **about),
                audit_draft(
                    action="policy.decided",
                    data={"on": "run.start", **_decided(decision, context)},
                    **about,
                ),
            ]
        )
        transaction.on_commit(lambda: _started(run, context if fields["here"] else None))
    return run


def _queued_data(agent: Agent, fields: dict) -> dict:
    """The `run.queued` event's data: the agent, and who asked if not a person or an
    integration asking it directly (an MCP client, by name; another agent's run)."""
    data: dict = {"agent": agent.slug, "version": fields["version"].number}
    if fields["sandbox"]:
        data["sandbox"] = True
    if fields["kind"] != RunKind.AGENT:
        data["via"] = str(fields["kind"])
    if fields["client"]:
        data["client"] = fields["client"]
    if fields["parent"] is not None:
        data["parent"] = fields["parent"].pk
    return data


def _started(run: Run, here: RunContext | None) -> None:
    """The committed run goes to a worker, or, `here` (what its start was decided on), to a
    thread of this process."""
    if here is not None:
        from agents.orchestrator import run_here

        run.done = run_here(run.pk, here)  # None: this process has no room for it
    if run.done is None:
        enqueue(run.pk)
    if run.stream:  # the conversation's open pages follow the new run
        event = {"type": "run.started", "run": run.pk}
        publish_group(f"conversation.{run.conversation_id}", event)


def _decided(decision: Decision, context: RunContext) -> dict:
    """A decision for the audit trail, with what the guardrails found in the message (never
    the text)."""
    data = decision.as_dict()
    if verdicts := [v for v in context.facts.verdicts if v.action != VerdictAction.PASS]:
        data["verdicts"] = [v.as_dict() for v in verdicts]
    return data


def _rate_limit(agent: Agent, actor) -> None:
    """Count the run against the agent's limits (a fixed window per minute, in Redis); refuse
    it when a limit is already reached."""
    limits = [
        (agent.runs_per_user_per_minute, ("user", actor.pk), "by one user"),
        (agent.runs_per_minute, ("all",), "for everybody together"),
    ]
    for limit, who, scope in limits:
        if not limit:
            continue
        per_minute = f"{limit}/minute"
        if not ratelimits.hit(per_minute, "run-rate", agent.pk, *who):
            retry = ratelimits.reset_in(per_minute, "run-rate", agent.pk, *who)
            raise RateLimited(
                f"the agent {agent.name} takes at most {limit} runs a minute {scope}; "
                f"try again in {retry} seconds",
                retry,
            )


@dataclass
class RunContext:
    """What governs a run of `agent` by `actor`: the facts the policy decides on, and what the
    run keeps to if allowed (the regions it may use, None for any; the budgets it counts on)."""

    facts: Facts
    regions: tuple[str, ...] | None = None
    budget_ids: list[int] = field(default_factory=list)


def run_start_facts(*, actor, agent: Agent, input: str = "") -> Facts:
    """What the policy needs to decide whether `actor` may start a run of `agent` with the
    message `input` (scanned for prompt injection)."""
    return run_context(actor=actor, agent=agent, input=input).facts


def run_context(*, actor, agent: Agent, input: str = "") -> RunContext:
    from agents.models import Deployment, ModelRoute

    active = bool(actor is not None and actor.is_active)
    if not active:
        inactive = Facts(
            actor_active=False,
            may_use_agent=False,
            agent_enabled=agent.enabled,
            may_use_route=False,
        )
        return RunContext(inactive)
    known = governance_snapshot(user=actor, agent=agent, route_model=ModelRoute)
    regions = regions_allowed(agent_regions=agent.allowed_regions, team_regions=known.team_regions)
    in_region = regions is None or (
        Deployment.objects.filter(route=agent.route_id, region__in=regions).exists()
    )
    budget_ids = known.budget_ids
    facts = Facts(
        actor_active=active,
        may_use_agent=known.may_use_agent,
        agent_enabled=agent.enabled,
        may_use_route=known.may_use_route,
        residency_ok=in_region,
        budget=budget_state(budget_ids=budget_ids),
        verdicts=(input_verdict(agent, input),) if input else (),
    )
    return RunContext(facts, regions, budget_ids)


def input_verdict(agent: Agent, text: str) -> Verdict:
    """The injection guardrail on the user's message, with the agent's action."""
    return injection_verdict(text, action=agent.injection_action, where="input")


def enqueue(run_id: int) -> None:
    """Hand the run to a worker."""
    from agents.tasks import run_execute_task

    run_execute_task.delay(run_id)


def run_cancel(*, run: Run, actor) -> Run:
    """Ask a run to stop. A queued run stops at once; a running one at its next step."""
    parked = (RunState.AWAITING_APPROVAL, RunState.AWAITING_REVIEW, RunState.AWAITING_DELEGATE)
    with transaction.atomic():
        if Run.objects.filter(pk=run.pk, state__in=parked).exists():
            # The requests first, then the run: the order a reviewer's decision locks them in.
            reviews_withdraw(run_id=run.pk, actor=actor)
        locked = Run.objects.select_for_update().get(pk=run.pk)
        if locked.state in FINAL_STATES:
            return locked
        locked.cancel_requested = True
        fields = ["cancel_requested"]
        if locked.state == RunState.QUEUED and not locked.lease_holder:
            locked.state, locked.finished_at = RunState.CANCELLED, timezone.now()
            locked.error = "cancelled before it started"
            fields += ["state", "finished_at", "error"]
        elif locked.state in parked:
            locked.error = (
                "cancelled while it waited for an agent it asked"
                if locked.state == RunState.AWAITING_DELEGATE
                else "cancelled while it waited for a reviewer"
            )
            locked.state, locked.finished_at = RunState.CANCELLED, timezone.now()
            fields += ["state", "finished_at", "error"]
        locked.save(update_fields=fields)
        if locked.state == RunState.CANCELLED:
            final = {"type": "final", "state": str(RunState.CANCELLED)}
            transaction.on_commit(lambda: publish(locked.pk, final))
            run_state_send(
                run_id=locked.pk, state=locked.state, application_id=locked.client_application_id
            )
            label = locked.agent.slug if locked.agent else MCP_LABEL
            _counted_finished(label, locked.state, timezone.now() - locked.created_at)
            run_wake_parent(parent_id=locked.parent_id, child_id=locked.pk, state=locked.state)
        audit_record(
            actor=actor, action="run.cancel_requested", target=Target.of(locked), run=locked.pk
        )
        # The agents it asked stop with it, once it has: each in a transaction of its own,
        # which takes the child's row before the parent's (the order a child's end takes
        # them in), and wakes no one.
        if locked.cancel_requested:
            transaction.on_commit(lambda: _cancel_children(locked, actor))
    return locked


def _cancel_children(run: Run, actor) -> None:
    for child in Run.objects.filter(parent=run).exclude(state__in=FINAL_STATES):
        run_cancel(run=child, actor=actor)


def lease_holder_name(task_id: str) -> str:
    """Who holds a lease: `host:pid:group:task`. The process group is the Celery worker's (a
    worker leads its own under `manage.py up`), so the launcher that saw the worker die can free
    what its pool held at once (`runs_release_worker`) instead of waiting out the lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.getpgrp()}:{task_id}"


def runs_release_worker(*, host: str, group: int) -> list[int]:
    """Expire the leases the dead worker process group `group` on `host` held; returns those
    runs, for the caller to hand on. Only for a group known to be gone, every member reaped:
    a live holder would lose its run mid-step."""
    with connection.cursor() as cursor:
        cursor.execute(_RELEASE_WORKER, [timezone.now(), host, str(group)])
        run_ids = [row[0] for row in cursor.fetchall()]
    if run_ids:
        logger.info("runs %s: leases of dead worker %s:%s released", run_ids, host, group)
    return run_ids


_RELEASE_WORKER = f"""
UPDATE agents_run SET lease_expires_at = %s
WHERE state = '{RunState.RUNNING}' AND lease_expires_at IS NOT NULL
    AND split_part(lease_holder, ':', 1) = %s AND split_part(lease_holder, ':', 3) = %s
RETURNING id
"""  # noqa: S608 - constants only


def run_acquire_lease(*, run_id: int, holder: str) -> int | None:
    """Take the run's lease if it is free or expired; returns the new fencing token."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _ACQUIRE, [holder, now + timedelta(seconds=lease_seconds()), now, run_id, now]
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


_ACQUIRE = f"""
UPDATE agents_run SET lease_holder = %s, fencing_token = fencing_token + 1,
    lease_expires_at = %s, state = '{RunState.RUNNING}', started_at = COALESCE(started_at, %s)
WHERE id = %s AND state IN ('{RunState.QUEUED}', '{RunState.RUNNING}')
    AND (lease_expires_at IS NULL OR lease_expires_at < %s)
RETURNING fencing_token
"""  # noqa: S608 - constants only


@dataclass
class StepRecord:
    kind: str
    input: dict
    output: dict
    status: str = "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    deployment: str = ""
    started_at: datetime | None = None


@dataclass
class Checkpoint:
    step: RunStep
    cancel_requested: bool


def run_checkpoint(
    *,
    run_id: int,
    token: int,
    index: int,
    conversation_id: int | None,
    step: StepRecord,
    messages: list[dict],
    audit_action: str,
    audit_data: dict,
    extra_audit: Sequence[tuple[str, dict]] = (),
    ledger: LedgerShare | None = None,
) -> Checkpoint:
    """Commit step `index`: the step row, the messages it adds, the run's totals, its audit
    events, and a renewed lease, all or nothing, and only while `token` is still the run's.
    Returns the step and whether somebody asked to cancel the run. `ledger` carries the
    invocation ledger's part (tools.ledger.LedgerShare): the rows of the read-only tool calls
    this step made commit with it, and the settings of the tool the next step calls come back.

    This is the runtime's hot path, so it is one statement (one round trip, atomic on its own;
    the ORM took eight): the fenced UPDATE checks the token and locks the run row, and every
    other write in it, the audit events' included, happens only if that UPDATE matched.
    """
    now = timezone.now()
    record = RunStep(
        run_id=run_id,
        index=index,
        kind=step.kind,
        input=step.input,
        output=step.output,
        status=step.status,
        started_at=step.started_at or now,
        finished_at=now,
        prompt_tokens=step.prompt_tokens,
        completion_tokens=step.completion_tokens,
        cost=step.cost,
        deployment=step.deployment,
    )
    params = _checkpoint_params(
        run_id=run_id, token=token, conversation_id=conversation_id, record=record, now=now
    )
    defaults = {"content": "", "tool_calls": [], "tool_call_id": "", "tokens": 0, "cost": 0}
    params["messages"] = _json([{**defaults, **message} for message in messages])
    params["stream"], params["events"] = _checkpoint_audit(
        run_id=run_id,
        conversation_id=conversation_id,
        index=index,
        events=[(audit_action, audit_data), *extra_audit],
    )
    ledger = ledger or LedgerShare()
    params.update(ledger.params(at=now))
    with raw_cursor() as cursor:  # server-side binding: prepared
        row = cursor.execute(_CHECKPOINT, params).fetchone()
    if row is None:
        raise LeaseLost(f"run {run_id}: lease token {token} is no longer current")
    record.pk = row[1]
    ledger.took(row[3])
    return Checkpoint(record, row[0])


def _checkpoint_params(
    *, run_id: int, token: int, conversation_id: int | None, record: RunStep, now
) -> dict:
    """The checkpoint statement's parameters for the run, its lease and the step row."""
    return {
        "run": run_id,
        "token": token,
        "conversation": conversation_id,
        "lease": now + timedelta(seconds=lease_seconds()),
        "now": now,
        "index": record.index,
        "kind": str(record.kind),
        "input": _json(record.input),
        "output": _json(record.output),
        "status": str(record.status),
        "started": record.started_at,
        "prompt": record.prompt_tokens,
        "completion": record.completion_tokens,
        "cost": record.cost,
        "deployment": record.deployment,
    }


def _checkpoint_audit(
    *, run_id: int, conversation_id: int | None, index: int, events: list[tuple[str, dict]]
) -> tuple:
    """(stream, events): the audit append's arguments for the step's events (audit's own)."""
    target = Target("agents.run", str(run_id), f"run {run_id}")
    return append_arguments(
        [
            audit_draft(
                actor=None,
                action=action,
                target=target,
                run=run_id,
                conversation=conversation_id,
                data={"step": index, **data},
            )
            for action, data in events
        ]
    )


def _json(value) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder)


_LIVE = ", ".join(f"'{state}'" for state in FINAL_STATES)
_CHECKPOINT = f"""
WITH fenced AS (
    UPDATE agents_run SET prompt_tokens = prompt_tokens + %(prompt)s,
        completion_tokens = completion_tokens + %(completion)s, cost = cost + %(cost)s,
        lease_expires_at = %(lease)s
    WHERE id = %(run)s AND fencing_token = %(token)s AND state NOT IN ({_LIVE})
    RETURNING id, cancel_requested
), step AS (
    INSERT INTO agents_runstep (run_id, "index", kind, input, output, status, started_at,
        finished_at, prompt_tokens, completion_tokens, cost, deployment)
    SELECT id, %(index)s, %(kind)s, %(input)s::jsonb, %(output)s::jsonb, %(status)s,
        %(started)s, %(now)s, %(prompt)s, %(completion)s, %(cost)s, %(deployment)s
    FROM fenced
    RETURNING id
), messages AS (
    INSERT INTO agents_message (conversation_id, run_id, role, content, tool_calls,
        tool_call_id, tokens, cost, created_at)
    SELECT %(conversation)s, fenced.id, m.role, m.content, m.tool_calls, m.tool_call_id,
        m.tokens, m.cost, %(now)s
    FROM fenced, jsonb_to_recordset(%(messages)s::jsonb) AS m(role text, content text,
        tool_calls jsonb, tool_call_id text, tokens integer, cost numeric)
), ledger AS ({LedgerShare.cte(after="fenced")})
SELECT fenced.cancel_requested, step.id,
    (SELECT count(*) FROM {append_call(stream="stream", events="events")}
     WHERE fenced.id IS NOT NULL),  -- correlated: runs only when the fenced UPDATE matched
    {LedgerShare.column()}
FROM fenced, step
"""  # noqa: S608 - constants only


def run_finish(
    *,
    run_id: int,
    token: int,
    state: str,
    answer: str = "",
    error: str = "",
    confidence: float | None = None,
    citations: Sequence[dict] = (),
) -> None:
    """Put the run in a final state and release its lease."""
    rounded = None if confidence is None else Decimal(str(round(confidence, 3)))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _FINISH, [state, answer, _json(list(citations)), error, rounded, run_id, token]
        )
        row = cursor.fetchone()
        if row is None:
            raise LeaseLost(f"run {run_id}: lease token {token} is no longer current")
        conversation_id, tokens, cost, agent, took, parent_id, application_id = row
        audit_record(
            actor=None,
            action=f"run.{state}",
            target=Target("agents.run", str(run_id), f"run {run_id} ({state})"),
            run=run_id,
            conversation=conversation_id,
            data={"error": error, "tokens": tokens, "cost": str(cost)},
        )
        # Links and images carrying data out: inert in Warden's pages, flagged for the rest.
        findings = [finding.as_dict() for finding in output_scan(answer)] if answer else []
        if findings:
            audit_record(
                actor=None,
                action="guardrail.found",
                target=Target("agents.run", str(run_id), f"run {run_id}"),
                run=run_id,
                conversation=conversation_id,
                data={"on": "answer", "findings": findings},
            )
        run_state_send(run_id=run_id, state=state, application_id=application_id)
        run_wake_parent(parent_id=parent_id, child_id=run_id, state=state)
        for finding in findings:
            guardrail_found(finding["guardrail"], where="answer", action="flag")
        _counted_finished(agent, state, took)


def conversation_touch(*, conversation_id: int | None = None, run_id: int | None = None) -> None:
    """Activity in a conversation (given, or `run_id`'s): a message asked, an answer landed.
    Its `updated_at` moves, in the caller's transaction (the one that writes the activity), so
    its owner's list (agents.selectors.conversations_of) puts it first."""
    if conversation_id is not None:
        Conversation.objects.filter(pk=conversation_id).update(updated_at=Now())
    elif run_id is not None:
        Conversation.objects.filter(runs=run_id).update(updated_at=Now())


def run_wake_parent(*, parent_id: int | None, child_id: int, state: str) -> None:
    """A run another agent's run asked (delegation) ended: that run, waiting for it, is queued
    again, in the caller's transaction (the one that ended the child: no moment where the
    child has ended and the parent still waits unwoken), and reads the answer as it reaches
    the call."""
    if parent_id is None:
        return
    woken = Run.objects.filter(pk=parent_id, state=RunState.AWAITING_DELEGATE).update(
        state=RunState.QUEUED
    )
    if woken:
        audit_record(
            actor=None,
            action="run.requeued",
            target=Target("agents.run", str(parent_id), f"run {parent_id}"),
            run=parent_id,
            data={"child": child_id, "state": str(state)},
        )
        transaction.on_commit(lambda: enqueue(parent_id))


def _counted_finished(agent: str, state: str, took: timedelta) -> None:
    """A run ended, with its time from start to end: counted once that commits."""

    def count() -> None:
        metrics.RUNS_FINISHED.labels(agent=agent, status=state).inc()
        metrics.RUN_DURATION.labels(agent=agent, status=state).observe(took.total_seconds())

    transaction.on_commit(count)


# The run's end is activity in its conversation: its updated_at moves in the same statement
# (conversation_touch's rule), so the owner's list puts it first.
_FINISH = f"""
WITH finished AS (
    UPDATE agents_run SET state = %s, answer = %s, citations = %s::jsonb, error = %s,
        confidence = %s, finished_at = statement_timestamp(),
        latency_ms = GREATEST(0, (EXTRACT(EPOCH FROM statement_timestamp()
            - COALESCE(started_at, created_at)) * 1000)::int),
        lease_holder = '', lease_expires_at = NULL
    WHERE id = %s AND fencing_token = %s
        AND state IN ('{RunState.QUEUED}', '{RunState.RUNNING}')
    RETURNING conversation_id, prompt_tokens + completion_tokens AS tokens, cost,
        COALESCE((SELECT slug FROM agents_agent WHERE agents_agent.id = agents_run.agent_id),
            '{MCP_LABEL}') AS agent,
        finished_at - created_at AS took, parent_id, client_application_id
), touched AS (
    UPDATE agents_conversation SET updated_at = statement_timestamp()
    FROM finished WHERE agents_conversation.id = finished.conversation_id
)
SELECT conversation_id, tokens, cost, agent, took, parent_id, client_application_id FROM finished
"""  # noqa: S608 - constants only


def runs_to_resume(*, stale_after: int = 60) -> list[int]:
    """Runs no worker is advancing: a running run whose lease expired, or a queued run nobody
    took (its message was lost with Redis, say). Re-enqueueing twice is harmless: the lease
    lets one worker in."""
    now = timezone.now()
    return list(
        Run.objects.filter(
            Q(state=RunState.RUNNING, lease_expires_at__lt=now)
            | Q(
                state=RunState.QUEUED,
                lease_expires_at__isnull=True,
                created_at__lt=now - timedelta(seconds=stale_after),
            )
        ).values_list("pk", flat=True)[:500]
    )


def permission_fingerprint(user) -> str:
    """Users with the same groups and permissions may share cached model answers."""
    groups = sorted(user.groups.values_list("name", flat=True))
    perms = sorted(user.get_all_permissions())
    raw = "|".join(["superuser" if user.is_superuser else "", *groups, "#", *perms])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def run_park(*, run_id: int, token: int, state: str) -> None:
    """Set the run aside (awaiting approval or review) and release its lease, in the caller's
    transaction; a decision puts it back (`run_approval_decided`, `run_escalation_decided`)."""
    with connection.cursor() as cursor:
        cursor.execute(_PARK, [state, run_id, token])
        row = cursor.fetchone()
        if row is None:
            raise LeaseLost(f"run {run_id}: lease token {token} is no longer current")
    audit_record(
        actor=None,
        action=f"run.{state}",
        target=Target("agents.run", str(run_id), f"run {run_id} ({state})"),
        run=run_id,
    )
    run_state_send(run_id=run_id, state=state, application_id=row[0])


_PARK = f"""
UPDATE agents_run SET state = %s, lease_holder = '', lease_expires_at = NULL
WHERE id = %s AND fencing_token = %s AND state = '{RunState.RUNNING}' AND NOT cancel_requested
RETURNING client_application_id
"""  # noqa: S608 - constants only


def run_approval_decided(request, **_signal) -> None:
    """governance.signals.approval_decided: the run parked on `request` is queued again; it
    reads the decision from the request when it reaches the call (and ends, if the call was
    refused)."""
    updated = Run.objects.filter(pk=request.run_id, state=RunState.AWAITING_APPROVAL).update(
        state=RunState.QUEUED
    )
    if updated:
        audit_record(
            actor=None,
            action="run.requeued",
            target=Target("agents.run", str(request.run_id), f"run {request.run_id}"),
            run=request.run_id,
            data={"approval": request.pk, "status": request.status},
        )
        transaction.on_commit(lambda: enqueue(request.run_id))
        event = {"type": "requeued", "approval": request.pk, "status": str(request.status)}
        transaction.on_commit(lambda: publish(request.run_id, event))


def run_escalation_decided(escalation, **_signal) -> None:
    """governance.signals.escalation_decided: the held answer reaches the user (as released)
    or the run is rejected with the reviewer's comment."""
    from governance.models import EscalationStatus

    released = escalation.status == EscalationStatus.RELEASED
    state = RunState.SUCCEEDED if released else RunState.REJECTED
    error = "" if released else _rejected_answer(escalation.comment)
    updated = Run.objects.filter(pk=escalation.run_id, state=RunState.AWAITING_REVIEW).update(
        state=state,
        answer=escalation.released_answer if released else "",
        citations=escalation.citations if released else [],
        confidence=escalation.confidence,
        error=error,
        finished_at=timezone.now(),
    )
    if updated:
        conversation_touch(run_id=escalation.run_id)  # the answer landed, or why not
        Message.objects.filter(
            run_id=escalation.run_id, role=MessageRole.ASSISTANT, content="(held for review)"
        ).update(content=escalation.released_answer if released else f"({error})")
        audit_record(
            actor=None,
            action=f"run.{state}",
            target=Target("agents.run", str(escalation.run_id), f"run {escalation.run_id}"),
            run=escalation.run_id,
            data={"escalation": escalation.pk, "error": error},
        )
        run_state_send(run_id=escalation.run_id, state=state)
        slug, created, parent_id = Run.objects.values_list(
            "agent__slug", "created_at", "parent_id"
        ).get(pk=escalation.run_id)
        _counted_finished(slug, state, timezone.now() - created)
        run_wake_parent(parent_id=parent_id, child_id=escalation.run_id, state=state)
        event = {"type": "final", "state": str(state)}  # streaming or not: it settles the run
        transaction.on_commit(lambda: publish(escalation.run_id, event))


def _rejected_answer(comment: str) -> str:
    reason = f": {comment}" if comment.strip() else ""
    return f"a reviewer did not release the answer{reason}"
