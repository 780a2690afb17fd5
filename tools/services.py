"""Calling a tool: the one path every invocation takes, from an agent run or an admin's test call.

`tool_invoke` validates the arguments against the tool's schema, reuses the ledger's result when
the call (its key) already finished, enforces the per-user rate limit, runs the tool's executor,
cuts an oversized result down with a marker, and records status, latency and tool version on the
ledger row. Failures come back as structured errors for the model, never as exceptions. Callers
audit: an agent run in its checkpoint, the admin's test call in `tool_test_call`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from tools.executors import Call, ToolError, executor
from tools.models import InvocationStatus, Tool, ToolInvocation, ToolKind
from tools.registry import ToolContext
from tools.schemas import Validator, instance_problem

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
    return instance_problem(Validator(tool.parameters), arguments)


def tool_invoke(tool: Tool, arguments: Any, *, key: str, context: ToolContext) -> Outcome:
    """Call `tool` once per `key` (see ToolInvocation for the guarantee)."""
    if problem := argument_problem(tool, arguments):
        return _failure(tool, ToolError("invalid_arguments", problem))
    done = ToolInvocation.objects.filter(key=key).exclude(status=InvocationStatus.STARTED).first()
    if done is not None:
        return _from_ledger(done)
    if not tool.enabled:
        return _failure(tool, ToolError("unavailable", f"the tool {tool.name!r} is disabled"))
    row = {"tool": tool.name, "tool_version": tool.version, "arguments": arguments}
    actor = getattr(context.actor, "pk", None) and context.actor
    if _over_rate_limit(tool, actor):
        limited = ToolError(
            "rate_limited", f"at most {tool.rate_limit} calls of {tool.name} per minute per user"
        )
        return _record(key, row, actor, _failure(tool, limited))
    call = Call(tool, arguments, key, context)
    if tool.kind == ToolKind.PYTHON:
        return _invoke_in_transaction(call, row, actor)
    ToolInvocation.objects.get_or_create(
        key=key, defaults={**row, "actor": actor, "status": InvocationStatus.STARTED}
    )
    return _record(key, row, actor, _run(call))


def tool_test_call(tool: Tool, arguments: Any, *, actor) -> Outcome:
    """An admin's test call (audited); it runs the tool for real, as `actor`."""
    key = f"test:{uuid.uuid4()}"
    outcome = tool_invoke(tool, arguments, key=key, context=ToolContext(actor=actor))
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


def _invoke_in_transaction(call: Call, row: dict, actor) -> Outcome:
    """A Python tool's effect and its ledger row commit together: a worker dying mid-call
    leaves neither, and a retry runs it again."""
    began = time.perf_counter()
    try:
        with transaction.atomic():
            outcome = _success(call.tool, executor("python").execute(call), began)
            ToolInvocation.objects.create(
                key=call.idempotency_key,
                **row,
                actor=actor,
                **_ledger_fields(outcome),
            )
    except IntegrityError:  # another worker recorded this call first: its result stands
        return _from_ledger(ToolInvocation.objects.get(key=call.idempotency_key))
    except ToolError as error:  # the effect rolled back with the transaction
        return _record(call.idempotency_key, row, actor, _failure(call.tool, error, began))
    except Exception:
        log.exception("tool %s failed", call.tool.name)
        failed = ToolError("failed", f"the tool {call.tool.name} failed (an internal error)")
        return _record(call.idempotency_key, row, actor, _failure(call.tool, failed, began))
    return outcome


def _run(call: Call) -> Outcome:
    began = time.perf_counter()
    try:
        return _success(call.tool, executor(call.tool.kind).execute(call), began)
    except ToolError as error:
        return _failure(call.tool, error, began)
    except Exception:
        log.exception("tool %s failed", call.tool.name)
        failed = ToolError("failed", f"the tool {call.tool.name} failed (an internal error)")
        return _failure(call.tool, failed, began)


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


def _ledger_fields(outcome: Outcome) -> dict:
    return {
        "status": outcome.status,
        "result": outcome.result,
        "error": outcome.error,
        "latency_ms": outcome.latency_ms,
        "finished_at": timezone.now(),
    }


def _record(key: str, row: dict, actor, outcome: Outcome) -> Outcome:
    ToolInvocation.objects.update_or_create(
        key=key, defaults={**row, "actor": actor, **_ledger_fields(outcome)}
    )
    return outcome


def _from_ledger(done: ToolInvocation) -> Outcome:
    return Outcome(
        result=done.result,
        ok=done.status == InvocationStatus.SUCCEEDED,
        error=done.error,
        latency_ms=done.latency_ms,
        tool_version=done.tool_version,
        reused=True,
    )


def _over_rate_limit(tool: Tool, actor) -> bool:
    """Fixed one-minute windows per tool and user, counted in the cache (Redis)."""
    if not tool.rate_limit or actor is None:
        return False
    window = f"tool-rate:{tool.pk}:{actor.pk}:{int(time.time() // 60)}"
    cache.add(window, 0, timeout=90)
    return cache.incr(window) > tool.rate_limit


def truncated(result: Any, limit: int) -> Any:
    """`result`, or, when its JSON is longer than `limit` characters, the first `limit` of
    them with a marker saying how much was cut."""
    if isinstance(result, str):
        text = result
    else:  # what is not JSON (a date, a Decimal) goes as its str(), as the ledger stores it
        text = json.dumps(result, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text if isinstance(result, str) else json.loads(text)
    return {
        "truncated": True,
        "content": text[:limit],
        "note": f"the result was cut to {limit:,} of its {len(text):,} characters",
    }
