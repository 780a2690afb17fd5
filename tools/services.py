"""Calling a tool: the one path every invocation takes, from an agent run or an admin's test call.

`tool_invoke` validates the arguments against the tool's schema, reuses the ledger's result when
the call (its key) already finished, enforces the per-user rate limit, runs the tool's executor,
cuts an oversized result down with a marker, and records status, latency and tool version on the
ledger row. Failures come back as structured errors for the model, never as exceptions. Callers
audit: an agent run in its checkpoint, the admin's test call in `tool_test_call`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import jsonschema
import psycopg
import referencing.exceptions
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)

from audit.pii import hash_key, pseudonymise_value
from audit.services import audit_record
from governance import ratelimits
from tools import ledger
from tools.db import raw_cursor
from tools.executors import Call, ToolError, executor
from tools.ledger import LIVE_FIELDS, LedgerShare
from tools.models import InvocationStatus, Tool, ToolInvocation, ToolKind
from tools.registry import PYTHON_FUNCTIONS, ToolContext
from tools.schemas import instance_problem, validator_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    result: Any  # what the model sees: the (possibly cut) result, or {"error": {...}}
    ok: bool
    error: str  # the error's kind ("timeout", "http_error", ...); "" when ok
    latency_ms: float | None  # None when nothing ran
    tool_version: str
    reused: bool = False  # the ledger already had this call's result: nothing ran

    @property
    def status(self) -> str:
        return InvocationStatus.SUCCEEDED if self.ok else InvocationStatus.FAILED


def argument_problem(tool: Tool, arguments: Any) -> str | None:
    try:
        return instance_problem(validator_for(tool.parameters), arguments)
    except (jsonschema.SchemaError, referencing.exceptions.Unresolvable) as error:
        # A schema that checks on save can still point nowhere ($ref): the call fails, clearly.
        return f"the tool's parameters schema cannot be used ({type(error).__name__})"


def tool_argument_problem(tool_id: int, arguments: Any, **_signal: Any) -> str | None:
    """argument_problem for a tool named by id (governance.signals.arguments_edited)."""
    tool = Tool.objects.filter(pk=tool_id).only("parameters").first()
    if tool is None:
        return "the tool no longer exists"
    return argument_problem(tool, arguments)


def tool_invoke(
    *,
    tool: Tool,
    arguments: Any,
    key: str,
    context: ToolContext,
    share: LedgerShare | None = None,
) -> Outcome:
    """Call `tool` once per `key` (see ToolInvocation for the guarantee). With `share`, the
    ledger's part of the caller's statements (a run's checkpoint: tools.ledger.LedgerShare),
    a Python tool whose settings the caller's last statement read back is not read again (its
    ledger row's INSERT ... ON CONFLICT then stands in for the lookup of the key), and a Python
    tool that only reads is not recorded here: its row is left with `share`, for the caller's
    next statement to write."""
    live = share.live(tool) if share is not None else None
    if live is not None:
        for field in LIVE_FIELDS:
            setattr(tool, field, live[field])
        done = None
    else:
        done = _refresh(tool, key)
    if problem := argument_problem(tool, arguments):
        return _failure(tool, ToolError("invalid_arguments", problem))
    if done is not None:
        return _from_ledger(ToolInvocation.objects.get(pk=done))
    if not tool.enabled:
        return _failure(tool, ToolError("unavailable", f"the tool {tool.name!r} is disabled"))
    row = {
        "tool": tool.name,
        "tool_version": tool.version,
        # The ledger keeps a keyed hash of personal data, never the value the tool was given
        # (audit.pii): the executor below gets `arguments` as they are.
        "arguments": pseudonymise_value(storable(arguments), key=hash_key()),
        "fence": context.fence,
    }
    actor = getattr(context.actor, "pk", None) and context.actor
    if _over_rate_limit(tool, actor):
        limited = ToolError(
            "rate_limited", f"at most {tool.rate_limit} calls of {tool.name} per minute per user"
        )
        return _record(key, row, actor, _failure(tool, limited))
    call = Call(tool, arguments, key, context)
    if tool.kind == ToolKind.PYTHON and not tool.has_side_effects and share is not None:
        outcome = _run(call)
        share.add(_ledger_row(key, row, actor, outcome, context.fence))
        return outcome
    if tool.kind == ToolKind.PYTHON and not _external(tool):
        return _invoke_in_transaction(call, row, actor)
    if (claimed := _claim(key, row, actor, context.fence)) is not None:
        return claimed  # finished by another worker since the lookup
    return _record(key, row, actor, _run(call))


def tool_test_call(*, tool: Tool, arguments: Any, actor: Any) -> Outcome:
    """An admin's test call (audited); it runs the tool for real, as `actor`."""
    key = f"test:{uuid.uuid4()}"
    outcome = tool_invoke(tool=tool, arguments=arguments, key=key, context=ToolContext(actor=actor))
    # The call commits in transactions of its own (the ledger's); its event follows.
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="tool.test_call",
            target=tool,
            data={
                "tool": tool.name,
                "version": outcome.tool_version,
                "arguments": arguments,
                "status": outcome.status,
                "error": outcome.error,
                "idempotency_key": key,
            },
        )
    return outcome


def tool_set_enabled(*, tool: Tool, enabled: bool, actor: Any) -> Tool:
    """Enable or disable a tool (a disabled one is neither offered nor callable, from the
    next call on, in running runs too). Audited."""
    with transaction.atomic():
        tool.enabled = enabled
        tool.save(update_fields=["enabled", "updated_at"])
        audit_record(
            actor=actor,
            action="tool.enabled" if enabled else "tool.disabled",
            target=tool,
            data={"tool": tool.name, "version": tool.version},
        )
    return tool


# What an API client may set on a tool; the rest (version, timestamps) is Warden's.
TOOL_FIELDS = (
    *("name", "description", "kind", "parameters", "config", "enabled", "mcp_exposed"),
    *("risk", "approval", "timeout", "result_limit", "rate_limit"),
)


def tool_fixed_fields(tool: Tool) -> tuple[str, ...]:
    """What cannot change on an existing tool, as in the admin: a Python tool's contract is
    its code's, an MCP tool's its server's."""
    if tool.kind in (ToolKind.PYTHON, ToolKind.MCP):
        return ("kind", "parameters")
    return ()


def tool_create(*, actor: Any, fields: dict[str, Any]) -> Tool:
    """A new tool from `fields` (TOOL_FIELDS), validated as the admin validates it (the
    model's validators: a valid JSON Schema, the kind's configuration). Audited; raises
    django's ValidationError."""
    unknown = set(fields) - set(TOOL_FIELDS)
    if unknown:
        raise ValueError(f"not tool fields: {sorted(unknown)}")
    tool = Tool(**fields)
    tool.version = tool.compute_version()
    tool.full_clean()
    try:
        with transaction.atomic():
            tool.save()
            audit_record(
                actor=actor,
                action="tool.created",
                target=tool,
                data={"tool": tool.name, "version": tool.version, "fields": sorted(fields)},
            )
    except IntegrityError:  # the same name, saved by someone else since full_clean
        raise ValidationError({"name": "Tool with this Name already exists."}) from None
    return tool


def tool_update(*, tool: Tool, actor: Any, fields: dict[str, Any]) -> Tool:
    """Change `fields` of `tool` (validated as on create; a fixed field refused). Audited with
    the names of the fields that changed; nothing changed, nothing recorded."""
    fixed = set(fields) & set(tool_fixed_fields(tool))
    if fixed:
        raise ValidationError(
            {name: f"a {tool.kind} tool's {name} cannot be changed here" for name in fixed}
        )
    unknown = set(fields) - set(TOOL_FIELDS)
    if unknown:
        raise ValueError(f"not tool fields: {sorted(unknown)}")
    changed = sorted(name for name, value in fields.items() if getattr(tool, name) != value)
    if not changed:
        return tool
    for name in changed:
        setattr(tool, name, fields[name])
    tool.full_clean()
    try:
        with transaction.atomic():
            before = tool.version
            tool.save(update_fields=[*changed, "updated_at"])
            audit_record(
                actor=actor,
                action="tool.changed",
                target=tool,
                data={
                    "tool": tool.name,
                    "fields": changed,
                    "from": before,
                    "version": tool.version,
                },
            )
    except IntegrityError:  # renamed to a name saved by someone else since full_clean
        raise ValidationError({"name": "Tool with this Name already exists."}) from None
    return tool


def _refresh(tool: Tool, key: str) -> int | None:
    """Re-read the tool's live fields and look the key up in the ledger, in one prepared
    statement (it runs for every call); the id of the key's finished ledger row, if any."""
    with raw_cursor() as cursor:
        cursor.execute(ledger.LIVE, [key, tool.pk])
        *live, done = cast(tuple[Any, ...], cursor.fetchone())  # one row: the tool's
    for field, value in zip(LIVE_FIELDS, live, strict=True):
        setattr(tool, field, json.loads(value) if field in ("config", "parameters") else value)
    return cast("int | None", done)  # the finished row's id, or NULL


STARTED = InvocationStatus.STARTED


class Fenced(Exception):
    """The ledger row belongs to a newer lease of the run: this worker lost it and must stop
    (the orchestrator stops the run's step as LeaseLost)."""


def _ledger_row(
    key: str, row: dict[str, Any], actor: Any, outcome: Outcome, fence: int | None
) -> dict[str, Any]:
    return {
        "key": key,
        "tool": row["tool"],
        "tool_version": row["tool_version"],
        "actor_id": getattr(actor, "pk", None),
        "arguments": row["arguments"],
        "status": str(outcome.status),
        # Hashed too: a call reused from the ledger after a crash gives the model the hashes.
        "result": pseudonymise_value(outcome.result, key=hash_key()),
        "error": outcome.error,
        "latency_ms": outcome.latency_ms,
        "fence": fence,
        "attempts": 1,
    }


def _claim(key: str, row: dict[str, Any], actor: Any, fence: int | None) -> Outcome | None:
    """Record the call as started under `fence` before making it; the finished row's outcome
    if another worker completed the call meanwhile. Raises Fenced when a newer lease holds it."""
    params = {**row, "key": key, "actor_id": getattr(actor, "pk", None)}
    params["arguments"] = json.dumps(row["arguments"])
    with raw_cursor() as cursor:
        claimed = cursor.execute(ledger.CLAIM, params).fetchone()
    if claimed is not None:
        return None
    done = ToolInvocation.objects.filter(key=key).exclude(status=STARTED).first()
    if done is not None:
        return _from_ledger(done)
    log.warning("ledger: stale claim of %s under token %s ignored", key, fence)
    raise Fenced(key)


def _invoke_in_transaction(call: Call, row: dict[str, Any], actor: Any) -> Outcome:
    """A Python tool's effect and its ledger row commit together: a worker dying mid-call
    leaves neither, and a retry runs it again. A tool that only reads has no effect to commit
    with: it runs, and its row follows, without a transaction of their own (two round trips
    fewer; a retry reads again)."""
    began = time.perf_counter()
    together = transaction.atomic() if call.tool.has_side_effects else contextlib.nullcontext()
    try:
        with together, raw_cursor() as cursor:
            outcome = _success(call.tool, executor("python").execute(call), began)
            record = _ledger_row(call.idempotency_key, row, actor, outcome, row["fence"])
            cursor.execute(ledger.RECORD, {"rows": json.dumps([record])})
            if cursor.fetchone() is None:
                raise _Recorded
    except _Recorded:  # another worker recorded this call first: its result stands
        return _from_ledger(ToolInvocation.objects.get(key=call.idempotency_key))
    except ToolError as error:  # the effect rolled back with the transaction
        return _record(call.idempotency_key, row, actor, _failure(call.tool, error, began))
    except Exception as exc:
        if _connection_lost(exc):
            raise  # nothing committed: the run retries the step (agents.faults)
        return _record(call.idempotency_key, row, actor, _internal_failure(call.tool, began))
    return outcome


def _run(call: Call) -> Outcome:
    began = time.perf_counter()
    try:
        return _success(call.tool, executor(call.tool.kind).execute(call), began)
    except ToolError as error:
        return _failure(call.tool, error, began)
    except Exception as exc:
        if _connection_lost(exc):
            raise  # Warden's database, not the tool, failed (reading a secret, say)
        return _internal_failure(call.tool, began)


def _connection_lost(exc: Exception) -> bool:
    """Whether `exc` is Warden's own database connection failing (not a tool's own)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True  # raised through Django's connections
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        raw = connection.connection
        return raw is None or raw.closed or raw.broken
    return False


def _internal_failure(tool: Tool, began: float) -> Outcome:
    """A bug or an unexpected error in the tool: logged with its traceback, reported to the
    model without it (the message could hold anything, a connection string included)."""
    log.exception("tool %s failed", tool.name)
    failed = ToolError("failed", f"the tool {tool.name} failed (an internal error)")
    return _failure(tool, failed, began)


class _Recorded(Exception):
    """The ledger already holds this key: roll this attempt's effect back."""


def _external(tool: Tool) -> bool:
    """A Python function whose effect leaves the database (mail): it cannot commit with the
    ledger row, so it takes the started-row path of HTTP and MCP tools."""
    function = PYTHON_FUNCTIONS.get(tool.config.get("function"))
    return bool(function and function.external)


def _success(tool: Tool, result: Any, began: float) -> Outcome:
    return Outcome(
        result=truncated(result, tool.result_limit),
        ok=True,
        error="",
        latency_ms=(time.perf_counter() - began) * 1000,
        tool_version=tool.version,
    )


def _failure(tool: Tool, error: ToolError, began: float | None = None) -> Outcome:
    return Outcome(
        result=error.as_result(),
        ok=False,
        error=error.kind,
        latency_ms=None if began is None else (time.perf_counter() - began) * 1000,
        tool_version=tool.version,
    )


def _record(key: str, row: dict[str, Any], actor: Any, outcome: Outcome) -> Outcome:
    """Write the call's outcome to its ledger row, first of all: the effect may have happened,
    so a database that went away for a moment is retried, on a new connection, a bounded
    number of times (outside a transaction; inside one, reconnecting is not possible)."""
    record = _ledger_row(key, row, actor, outcome, row["fence"])
    record["attempts"] = 0 if outcome.latency_ms is None else 1  # nothing ran, or it did
    params = record | {
        "arguments": json.dumps(record["arguments"]),
        "result": json.dumps(record["result"]),
    }
    for attempt in itertools.count(1):
        try:
            with raw_cursor() as cursor:
                written = cursor.execute(ledger.FINISH, params).fetchone()
            break
        except (DatabaseError, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not _reconnectable(exc) or attempt >= settings.WARDEN_RUN_RETRY_ATTEMPTS:
                raise
            log.warning("ledger: recording %s failed (%s); retrying", key, type(exc).__name__)
            connection.close()
            time.sleep(_backoff(attempt))
    if written is None:
        log.warning("ledger: stale write of %s under token %s ignored", key, row["fence"])
        raise Fenced(key)
    return outcome


def _reconnectable(exc: Exception) -> bool:
    """A connection error that a new connection may not have (never inside a transaction)."""
    transient = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
    return isinstance(exc, transient) and not connection.in_atomic_block


def _backoff(attempt: int) -> float:
    delay: float = min(
        settings.WARDEN_RUN_RETRY_BACKOFF_MAX_SECONDS,
        settings.WARDEN_RUN_RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1),
    )
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not secrecy


def _from_ledger(done: ToolInvocation) -> Outcome:
    return Outcome(
        result=done.result,
        ok=done.status == InvocationStatus.SUCCEEDED,
        error=done.error,
        latency_ms=done.latency_ms,
        tool_version=done.tool_version,
        reused=True,
    )


def _over_rate_limit(tool: Tool, actor: Any) -> bool:
    """Fixed one-minute windows per tool and user, counted in Redis."""
    if not tool.rate_limit or actor is None:
        return False
    return not ratelimits.hit(f"{tool.rate_limit}/minute", "tool-rate", tool.pk, actor.pk)


def truncated(result: Any, limit: int) -> Any:
    """`result`, or, when its JSON is longer than `limit` characters, the first `limit` of
    them with a marker saying how much was cut."""
    result = storable(result)
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    if len(text) <= limit:
        return result
    return {
        "truncated": True,
        "content": text[:limit],
        "note": f"the result was cut to {limit:,} of its {len(text):,} characters",
    }


def storable(value: Any) -> Any:
    """`value` as PostgreSQL's jsonb can hold it: NUL characters (jsonb refuses \\u0000)
    replaced, NaN and infinities and what is not JSON (a date, a Decimal) as strings."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {storable(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return storable(str(value))
