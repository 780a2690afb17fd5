"""Tool calls that no agent makes: an MCP client calls a tool itself (integrations/mcp).

Each call is a run of its own (kind `mcp`, no agent, no conversation), so it is governed,
executed and recorded exactly as an agent's tool call: the policy decides as it starts, a
worker executes it through the same step (agents.orchestrator: arguments, the policy again,
approval, the invocation ledger, the result's guardrails, the checkpoint and its audit events),
and it shows in the trace page, the inbox and the API like any run.
"""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.db import IntegrityError, transaction

from agents.models import Run, RunKind
from agents.services import (
    MAX_INPUT,
    MCP_LABEL,
    InputTooLong,
    RateLimited,
    RunDenied,
    RunError,
    enqueue,
    run_idempotent,
)
from agents.submit import scoped_key
from audit.services import Target, audit_record
from governance import ratelimits
from governance.access import may
from governance.budgets import budget_refusal, budget_state, budgets_of
from governance.models import Action
from governance.policy import Decision, Effect, Facts, ToolFacts, decide, explain
from telemetry import metrics, tracing
from tools.models import Tool
from tools.schemas import text_problem
from tools.services import argument_problem

# An agent asked as a tool, by an MCP client or by another agent (delegation): ask_<slug>.
ASK_PREFIX = "ask_"
ASK_SCHEMA = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 1, "description": "what to ask the agent"}
    },
    "required": ["question"],
    "additionalProperties": False,
}


def ask_description(agent) -> str:
    described = f"Ask the agent {agent.name}"
    described += f": {agent.description}" if agent.description else "."
    return described + " Returns its answer, with the sources it cites."


class ArgumentsInvalid(RunError):
    code = "arguments_invalid"


def ask_question(arguments: object) -> str:
    """The question of an `ask_<slug>` call (ASK_SCHEMA), or ArgumentsInvalid."""
    if not isinstance(arguments, dict) or set(arguments) != {"question"}:
        raise ArgumentsInvalid("give one argument, `question`: the text to ask")
    question = arguments["question"]
    if not isinstance(question, str) or not question.strip():
        raise ArgumentsInvalid("give one argument, `question`: the text to ask")
    return question


def tool_call_start(
    *,
    actor,
    tool: Tool,
    arguments: dict,
    client: str = "",
    idempotency_key: str = "",
    client_application_id: int | None = None,
) -> Run:
    """Queue a call of `tool` with `arguments` by `actor` through an MCP client named `client`.
    The same `idempotency_key` (the request's `_meta.idempotency_key`) returns the run it
    started before, if the call is the same too (IdempotencyConflict if not). Raises
    ArgumentsInvalid, RateLimited, or a RunDenied with the policy's reasons (audited); nothing
    is written then."""
    problem = argument_problem(tool, arguments)
    if problem is not None:
        raise ArgumentsInvalid(problem)
    call = {"id": "mcp", "name": tool.name, "arguments": json.dumps(arguments, sort_keys=True)}
    text = json.dumps(call)
    if len(text) > MAX_INPUT:
        raise InputTooLong(f"the arguments are longer than {MAX_INPUT} characters")
    if problem := text_problem(text):
        raise ArgumentsInvalid(f"the arguments hold {problem}")
    key = scoped_key(idempotency_key, "mcp", client_application_id)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    if key:
        existing = run_idempotent(actor, key, fingerprint)
        if existing is not None:
            return existing
    with tracing.run_started("start run", {"warden.tool": tool.name}) as trace_parent:
        budget_ids = budgets_of(actor) if actor.is_active else []
        decision = decide(tool_call_facts(actor, tool, budget_ids=budget_ids))
        # Only a denial refuses the start: an approval is the call step's to ask (the run
        # starts, and parks there, with the arguments for the reviewer).
        if decision.effect == Effect.DENY:
            _refuse(actor, tool, decision, budget_ids, client)
        _rate_limit(actor)
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    kind=RunKind.MCP,
                    tool=tool,
                    actor=actor,
                    input=text,
                    client=client[:200],
                    idempotency_key=key,
                    idempotency_fingerprint=fingerprint if key else "",
                    stream=False,
                    client_application_id=client_application_id,
                    trace_parent=trace_parent,
                )
                target = Target.of(run)
                audit_record(
                    actor=actor,
                    action="run.queued",
                    target=target,
                    run=run.pk,
                    data={"tool": tool.name, "client": run.client, "via": "mcp"},
                )
                audit_record(
                    actor=actor,
                    action="policy.decided",
                    target=target,
                    run=run.pk,
                    data={"on": "run.start", "tool": tool.name, **decision.as_dict()},
                )
                transaction.on_commit(lambda: enqueue(run.pk))
        except IntegrityError:
            existing = run_idempotent(actor, key, fingerprint) if key else None
            if existing is None:
                raise
            return existing
    metrics.RUNS_STARTED.labels(agent=MCP_LABEL).inc()
    return run


def tool_call_facts(actor, tool: Tool, *, budget_ids: list[int] | None = None) -> Facts:
    """What the policy decides an MCP client's call on, as it starts and again as a worker
    takes it up: the actor, the tool (the approval is for the call step to ask), the budgets
    of the actor and their teams. No agent and no model: those facts do not apply."""
    active = bool(actor is not None and actor.is_active)
    ids = budgets_of(actor) if budget_ids is None and active else (budget_ids or [])
    return Facts(
        actor_active=active,
        may_use_agent=True,
        agent_enabled=True,
        may_use_route=True,
        budget=budget_state(budget_ids=ids),
        tool=ToolFacts(
            name=tool.name,
            may_use=active and tool.mcp_exposed and may(actor, tool, Action.USE),
            enabled=tool.enabled,
            risk=tool.risk,
            approval=tool.approval,
        ),
    )


def _refuse(actor, tool: Tool, decision: Decision, budget_ids: list[int], client: str) -> None:
    """Audit the policy's no (in its own transaction: nothing else is written) and raise it."""
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="policy.decided",
            target=Target.of(tool),
            data={"on": "mcp.call", "client": client[:200], **decision.as_dict()},
        )
    message = explain(decision, tool=tool.name)
    if "budget.exhausted" in decision.reasons:
        message = budget_refusal(budget_ids=budget_ids)
        metrics.BUDGET_REFUSALS.labels(on="start").inc()
    raise RunDenied.of(message, decision)


def _rate_limit(actor) -> None:
    """MCP calls per account per minute (WARDEN_MCP_CALLS_PER_MINUTE; each tool's own limit
    is the call step's, as for an agent's call)."""
    limit = settings.WARDEN_MCP_CALLS_PER_MINUTE
    if not limit:
        return
    per_minute = f"{limit}/minute"
    if not ratelimits.hit(per_minute, "mcp-rate", actor.pk):
        retry = ratelimits.reset_in(per_minute, "mcp-rate", actor.pk)
        raise RateLimited(
            f"at most {limit} MCP calls a minute per account; try again in {retry} seconds",
            retry,
        )
