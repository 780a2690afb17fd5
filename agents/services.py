"""Runs: starting, cancelling, leasing and checkpointing (DESIGN.md §3 and §4).

The orchestrator (agents/orchestrator.py) drives a run step by step through these writes. Every
write a worker makes after taking the lease goes through `run_checkpoint`, which locks the run
row and checks the fencing token first: a worker whose lease was taken over can never write.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.models import (
    FINAL_STATES,
    Agent,
    Conversation,
    Message,
    MessageRole,
    Run,
    RunState,
    RunStep,
)
from audit.services import Target, audit_record

logger = logging.getLogger(__name__)


class RunError(Exception):
    """A run cannot be started or changed; the message is for the person who asked."""


class LeaseLost(Exception):
    """Another worker holds the run now: stop without writing anything more."""


def lease_seconds() -> int:
    return settings.WARDEN_RUN_LEASE_SECONDS


def run_start(
    *, agent: Agent, conversation: Conversation, actor, input: str, idempotency_key: str = ""
) -> Run:
    """Queue a run of `agent` on the actor's message; the same idempotency key returns the
    run it started before instead of a second one."""
    if not agent.enabled:
        raise RunError(f"the agent {agent.name} is disabled")
    if conversation.owner_id != actor.pk or conversation.agent_id != agent.pk:
        raise RunError("no such conversation")  # missing and forbidden look the same
    if not input.strip():
        raise RunError("the message is empty")
    if idempotency_key:
        existing = Run.objects.filter(actor=actor, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    with transaction.atomic():
        run = Run.objects.create(
            agent=agent,
            conversation=conversation,
            actor=actor,
            input=input,
            idempotency_key=idempotency_key,
        )
        Message.objects.create(
            conversation=conversation, run=run, role=MessageRole.USER, content=input
        )
        audit_record(
            actor=actor,
            action="run.queued",
            target=Target.of(run),
            run=run.pk,
            conversation=conversation.pk,
            data={"agent": agent.slug},
        )
        transaction.on_commit(lambda: _enqueue(run.pk))
    return run


def _enqueue(run_id: int) -> None:
    from agents.tasks import run_execute_task

    run_execute_task.delay(run_id)


def run_cancel(*, run: Run, actor) -> Run:
    """Ask a run to stop. A queued run stops at once; a running one at its next step."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        if locked.state in FINAL_STATES:
            return locked
        locked.cancel_requested = True
        fields = ["cancel_requested"]
        if locked.state == RunState.QUEUED and not locked.lease_holder:
            locked.state, locked.finished_at = RunState.CANCELLED, timezone.now()
            locked.error = "cancelled before it started"
            fields += ["state", "finished_at", "error"]
        locked.save(update_fields=fields)
        audit_record(
            actor=actor, action="run.cancel_requested", target=Target.of(locked), run=locked.pk
        )
    return locked


def run_acquire_lease(*, run_id: int, holder: str) -> int | None:
    """Take the run's lease if it is free or expired; returns the new fencing token."""
    now = timezone.now()
    updated = Run.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now),
        pk=run_id,
        state__in=[RunState.QUEUED, RunState.RUNNING],
    ).update(
        lease_holder=holder,
        fencing_token=F("fencing_token") + 1,
        lease_expires_at=now + timedelta(seconds=lease_seconds()),
        state=RunState.RUNNING,
    )
    if not updated:
        return None
    run = Run.objects.only("fencing_token", "started_at").get(pk=run_id)
    if run.started_at is None:
        Run.objects.filter(pk=run_id, started_at__isnull=True).update(started_at=now)
    return run.fencing_token


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
    started_at: object = None


def run_checkpoint(
    *,
    run_id: int,
    token: int,
    index: int,
    conversation_id: int,
    step: StepRecord,
    messages: list[dict],
    audit_action: str,
    audit_data: dict,
    extra_audit: list[tuple[str, dict]] = (),
) -> RunStep:
    """Commit step `index`: the step row, the messages it adds, the run's totals, its audit
    events, and a renewed lease, all or nothing, and only while `token` is still the run's.

    The fenced UPDATE comes first: it both checks the token and locks the run row until the
    commit, so a worker that lost the lease writes nothing.
    """
    with transaction.atomic():
        now = timezone.now()
        fenced = (
            Run.objects.filter(pk=run_id, fencing_token=token)
            .exclude(state__in=FINAL_STATES)
            .update(
                prompt_tokens=F("prompt_tokens") + step.prompt_tokens,
                completion_tokens=F("completion_tokens") + step.completion_tokens,
                cost=F("cost") + step.cost,
                lease_expires_at=now + timedelta(seconds=lease_seconds()),
            )
        )
        if not fenced:
            raise LeaseLost(f"run {run_id}: lease token {token} is no longer current")
        record = RunStep.objects.create(
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
        for message in messages:
            Message.objects.create(conversation_id=conversation_id, run_id=run_id, **message)
        target = Target("agents.run", str(run_id), f"run {run_id}")
        for action, data in [(audit_action, audit_data), *extra_audit]:
            audit_record(
                actor=None,
                action=action,
                target=target,
                run=run_id,
                conversation=conversation_id,
                data={"step": index, **data},
            )
    return record


def run_finish(
    *,
    run_id: int,
    token: int,
    state: str,
    answer: str = "",
    error: str = "",
    confidence: float | None = None,
) -> None:
    """Put the run in a final state and release its lease."""
    with transaction.atomic():
        run = _fenced(run_id, token)
        now = timezone.now()
        run.state, run.answer, run.error, run.finished_at = state, answer, error, now
        run.confidence = None if confidence is None else Decimal(str(round(confidence, 3)))
        run.latency_ms = int((now - (run.started_at or run.created_at)).total_seconds() * 1000)
        run.lease_holder, run.lease_expires_at = "", None
        run.save(
            update_fields=[
                "state",
                "answer",
                "error",
                "finished_at",
                "confidence",
                "latency_ms",
                "lease_holder",
                "lease_expires_at",
            ]
        )
        audit_record(
            actor=None,
            action=f"run.{state}",
            target=Target.of(run),
            run=run_id,
            conversation=run.conversation_id,
            data={"error": error, "tokens": run.tokens, "cost": str(run.cost)},
        )


def _fenced(run_id: int, token: int) -> Run:
    run = Run.objects.select_for_update().get(pk=run_id)
    if run.fencing_token != token or run.state in FINAL_STATES:
        raise LeaseLost(f"run {run_id}: lease token {token} is no longer current")
    return run


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
