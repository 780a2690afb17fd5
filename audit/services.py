"""Recording audit events and anchoring the chains.

Concurrency design. One global chain would make every writer wait for the previous writer's
transaction to commit, so unrelated runs would queue behind one lock. Instead each event belongs
to a stream (by default its run, else its conversation, else its target), and each stream is a
hash chain of its own whose head row (`AuditStream`) is locked by the writer until its
transaction ends: writers of one stream take turns, writers of different streams never wait for
each other. The global `sequence` is drawn under the stream lock, so within a stream sequence
order is chain order. A periodic task (`audit_anchor`) appends the heads of every stream written
since the previous anchor to a second, global chain (`AuditAnchor`), skipping streams whose
writers are still in flight, so it never blocks them; verification then also notices a stream
cut short or removed before its last anchor.

A transaction that appends to several streams locks them in the order it writes them; two
transactions writing the same two streams in opposite orders deadlock, and PostgreSQL aborts
one of them (its action fails and may be retried). Services write one stream per transaction.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.utils import timezone

from audit import chain
from audit.models import ActorType, AuditAnchor, chain_time
from audit.redaction import as_json, redact, scrub
from telemetry import metrics

ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class AuditError(Exception):
    """An event could not be recorded; the action that asked for it must not commit."""


@dataclass(frozen=True)
class Actor:
    """Who acted: a user, an integration application, or Warden itself."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def of(cls, who: Any) -> Actor:
        if who is None:
            return SYSTEM
        if isinstance(who, Actor):
            return who
        if getattr(who, "is_authenticated", False):
            return cls(ActorType.USER, str(who.pk), who.get_username())
        if hasattr(who, "is_authenticated"):
            return cls(ActorType.USER, "", "anonymous")
        raise AuditError(f"not an actor: {type(who).__name__}")


SYSTEM = Actor(ActorType.SYSTEM, "", "warden")


@dataclass(frozen=True)
class Target:
    """What was acted on: a type (a model label such as ``auth.user``), an id and a label."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def of(cls, obj: Any) -> Target:
        if isinstance(obj, Target):
            return obj
        meta = getattr(obj, "_meta", None)
        if meta is None:
            raise AuditError(f"not a target: {type(obj).__name__}")
        return cls(meta.label_lower, str(obj.pk), str(obj)[:200])


def _in_a_service_transaction() -> bool:
    """Whether an atomic block of the code is open. The blocks Django's TestCase opens around
    each test (marked `_from_testcase`) are not one: a service that forgot its transaction
    would pass every such test and fail in production (the admin's test call did)."""
    return any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def audit_record(
    *,
    actor: Any,
    action: str,
    target: Any,
    data: Mapping[str, Any] | None = None,
    run: str | int | None = None,
    conversation: str | int | None = None,
    stream: str | None = None,
) -> int:
    """Append one event, inside the caller's transaction: it commits or rolls back with it.
    Returns its sequence number (the row is not read back: most callers never look at it).

    `actor` is an Actor, a user or None (Warden itself); `target` a Target or a model instance.
    Secret-named keys in `data` are redacted; values must be JSON-serialisable (dates, decimals
    and UUIDs become strings).
    """
    if not _in_a_service_transaction():
        raise AuditError("audit_record must be called inside the acting service's transaction")
    try:
        draft = audit_draft(
            actor=actor,
            action=action,
            target=target,
            data=data,
            run=run,
            conversation=conversation,
            stream=stream,
        )
    except AuditError:
        # The action must not commit without its event, even if the caller swallows this.
        transaction.set_rollback(True)
        raise
    fields = draft.fields
    with connection.cursor() as cursor:
        cursor.execute(
            _APPEND_ONE,
            [draft.stream, *[fields[name] for name in APPEND_ONE_FIELDS], draft.content],
        )
        (sequence,) = cursor.fetchone()
    _counter(fields["action"]).inc()
    return int(sequence)


def audit_record_drafts(drafts: list[Draft]) -> None:
    """Append events drafted by `audit_draft`, all of one stream, in one statement inside the
    caller's transaction (an action that is recorded as several events at once: a run's
    `run.queued` and its `policy.decided`). As `audit_record`, without the sequences."""
    if not _in_a_service_transaction():
        raise AuditError(
            "audit_record_drafts must be called inside the acting service's transaction"
        )
    stream, events = append_arguments(drafts)
    with connection.cursor() as cursor:
        cursor.execute(_APPEND_ALL, [stream, events])


class Draft(NamedTuple):  # a tuple: built for every event, at a third of a dataclass's cost
    """An event checked, redacted and serialised, not yet on its stream's chain."""

    stream: str
    fields: dict[str, Any]  # the content fields, data as its canonical JSON text
    content: str  # chain.content_digest of the event


def audit_draft(
    *,
    actor: Any,
    action: str,
    target: Any,
    data: Mapping[str, Any] | None = None,
    run: str | int | None = None,
    conversation: str | int | None = None,
    stream: str | None = None,
) -> Draft:
    """The event `audit_record` would append, for a caller that appends it in a statement of
    its own (the run checkpoint: see `append_arguments`). Raises AuditError on a malformed
    action or data."""
    if not ACTION_PATTERN.match(action) or len(action) > 100:
        raise AuditError(f"action must be a dotted lower-case verb such as run.started: {action!r}")
    who, what = Actor.of(actor), Target.of(target)
    try:
        clean = redact(as_json(dict(data or {})))
        text = chain.canonical_json(clean)  # rejects NaN and infinity
    except (TypeError, ValueError, RecursionError) as exc:
        raise AuditError(f"audit data is not JSON: {exc}") from None
    run_ref = "" if run is None else scrub(str(run))[:64]
    conversation_ref = "" if conversation is None else scrub(str(conversation))[:64]
    fields = {
        "actor_type": str(who.type),
        "actor_id": scrub(who.id)[:64],
        "actor_label": scrub(who.label)[:200],
        "action": action,
        "target_type": scrub(what.type)[:100],
        "target_id": scrub(what.id)[:64],
        "target_label": scrub(what.label)[:200],
        "run": run_ref,
        "conversation": conversation_ref,
        "data": clean,
    }
    key = scrub(stream or _default_stream(run_ref, conversation_ref, what))[:200]
    content = chain.content_digest({**fields, "stream": key})
    return Draft(key, {**fields, "data": text}, content)


def append_arguments(drafts: list[Draft]) -> tuple[str, str]:
    """The arguments of `audit_append(stream, events::jsonb)` (migrations 0004 and 0006), the
    SQL function that chains and appends `drafts`, in order, to their one stream. Called inside a
    statement of the acting transaction, it commits or rolls back with the action."""
    stream = drafts[0].stream
    if any(draft.stream != stream for draft in drafts):
        raise AuditError("one append writes one stream")
    for draft in drafts:
        _counter(draft.fields["action"]).inc()
    return stream, json.dumps([{**draft.fields, "content": draft.content} for draft in drafts])


def append_call(*, stream: str, events: str) -> str:
    """The SQL call of `audit_append` on the named parameters `stream` and `events` (their
    values: `append_arguments`), for a statement that appends as it acts (the checkpoint's)."""
    return f"audit_append(%({stream})s, %({events})s::jsonb)"


def _default_stream(run: str, conversation: str, target: Target) -> str:
    if run:
        return f"run:{run}"
    if conversation:
        return f"conversation:{conversation}"
    return f"{target.type}:{target.id}" if target.id else target.type


@functools.lru_cache(maxsize=1024)
def _counter(action: str) -> Any:
    """The events counter's child for `action`: `labels()` takes a lock on every call."""
    return metrics.AUDIT_EVENTS.labels(action=action)


# `audit_append_one`'s parameters (migration 0006), named: p_ and the field.
APPEND_ONE_FIELDS = tuple(name for name in chain.CONTENT_FIELDS if name != "stream")
_ARGUMENTS = ", ".join(f"p_{name} => %s" for name in ("stream", *APPEND_ONE_FIELDS, "content"))
_APPEND_ONE = f"SELECT sequence FROM audit_append_one({_ARGUMENTS})"  # noqa: S608
_APPEND_ALL = "SELECT count(*) FROM audit_append(%s, %s::jsonb)"


def audit_anchor() -> AuditAnchor | None:
    """Append the heads of every stream written since the last anchor to the global chain.

    Streams locked by a writer still in flight are skipped (they are anchored next time), so
    anchoring never makes a writer wait for more than this short transaction.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('warden.audit.anchor'))")
        cursor.execute(
            "SELECT id, key, last_seq, last_hash FROM audit_auditstream WHERE NOT anchored "
            "ORDER BY id FOR UPDATE SKIP LOCKED"
        )
        rows = cursor.fetchall()
        if not rows:
            return None
        previous = AuditAnchor.objects.order_by("-sequence").values_list("hash", flat=True).first()
        cursor.execute("SELECT nextval(pg_get_serial_sequence('audit_auditanchor', 'sequence'))")
        (sequence,) = cursor.fetchone()
        anchor = {
            "sequence": sequence,
            "time": chain_time(timezone.now()),
            "heads": {key: [seq, digest] for _id, key, seq, digest in rows},
            "prev_hash": previous or chain.GENESIS,
        }
        anchor["hash"] = chain.anchor_hash(anchor)
        record = AuditAnchor.objects.create(
            sequence=sequence,
            time=anchor["time"],
            heads=chain.canonical_json(anchor["heads"]),
            prev_hash=anchor["prev_hash"],
            hash=anchor["hash"],
        )
        cursor.execute(
            "UPDATE audit_auditstream SET anchored = true WHERE id = ANY(%s)",
            [[row[0] for row in rows]],
        )
    return record
