"""The policy decision point (DESIGN.md §6): one pure function from the facts of a request to
allow, require approval or deny, with the reasons.

`decide` reads nothing and writes nothing, so it is tested as a table; the callers gather the
facts (access checks, guardrail verdicts, budget state, residency) and record each decision in
the audit trail, in the transaction of the step it decides.

Reason codes, by effect:
- deny: actor.inactive, agent.forbidden, agent.disabled, route.forbidden, residency.no_region,
  budget.exhausted, guardrail.<name>.block, tool.forbidden, tool.disabled,
  tool.arguments_invalid, approval.rejected, approval.expired, approval.stale
- require approval: tool.approval_always, tool.risk_write, tool.risk_critical,
  guardrail.<name>.approve, provenance.untrusted:<source> (a write or critical call after the
  run read untrusted content from <source>: `kb/<slug>` or `tool/<name>`; whatever the tool's
  approval setting, `never` included)
- notes on an allow: approval.granted, guardrail.<name>.flag, guardrail.<name>.approve_next,
  budget.soft_limit, tool.risk_read, tool.approval_never, provenance.untrusted_read (a read
  tool's call after untrusted content: it changes nothing, so it passes)
Every deny reason that holds is listed (not just the first), so the audit trail says all that
was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from telemetry import tracing


class Effect(StrEnum):
    ALLOW = "allow"
    REQUIRE_APPROVAL = "require_approval"
    DENY = "deny"


class VerdictAction(StrEnum):
    PASS = "pass"  # noqa: S105 - nothing found
    FLAG = "flag"  # found; recorded, nothing else
    APPROVE = "approve"  # found; the next tool call needs a reviewer
    BLOCK = "block"  # found; refused


class BudgetState(StrEnum):
    OK = "ok"
    SOFT = "soft"  # past a soft limit: allowed, somebody is told
    EXHAUSTED = "exhausted"  # a hard limit leaves nothing for the call


@dataclass(frozen=True)
class Verdict:
    """What one guardrail found in one text."""

    guardrail: str  # injection, pii...
    action: VerdictAction
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"guardrail": self.guardrail, "action": str(self.action), "detail": self.detail}


class ApprovalState(StrEnum):
    NONE = "none"  # nobody was asked (yet)
    APPROVED = "approved"  # for exactly these arguments
    REJECTED = "rejected"
    EXPIRED = "expired"
    STALE = "stale"  # approved, but the tool changed since


@dataclass(frozen=True)
class ToolFacts:
    name: str
    may_use: bool
    enabled: bool
    risk: str  # tools.RiskTier: read, write, critical
    approval: str  # tools.Approval: tier, always, never
    arguments_valid: bool = True
    approval_state: ApprovalState = ApprovalState.NONE


@dataclass(frozen=True)
class Facts:
    actor_active: bool
    may_use_agent: bool
    agent_enabled: bool
    may_use_route: bool
    residency_ok: bool = True
    budget: BudgetState = BudgetState.OK
    verdicts: tuple[Verdict, ...] = ()
    tool: ToolFacts | None = None  # None: starting a run; otherwise one tool call
    # The sources of untrusted content the run had read when the model chose this call (its
    # taint, agents.provenance): `kb/<slug>`, `tool/<name>`. Trusted sources are not listed.
    untrusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    effect: Effect
    reasons: tuple[str, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return self.effect == Effect.ALLOW

    def as_dict(self) -> dict[str, object]:
        return {"effect": str(self.effect), "reasons": list(self.reasons)}


def decide(facts: Facts) -> Decision:
    """Deny if anything denies; else require approval if anything asks for it; else allow.
    Traced as a span of its own (telemetry.tracing), with the effect and the reasons."""
    if not tracing.ENABLED:
        return _decide(facts)
    on = {"warden.decision.on": f"tool {facts.tool.name}" if facts.tool else "run"}
    with tracing.span("governance.decide", on) as current:
        decision = _decide(facts)
        tracing.annotate(
            current,
            {
                "warden.decision.effect": str(decision.effect),
                "warden.decision.reasons": list(decision.reasons),
            },
        )
        return decision


def _decide(facts: Facts) -> Decision:
    deny = _denials(facts)
    if deny:
        return Decision(Effect.DENY, tuple(deny))
    approve, notes = _approvals_and_notes(facts)
    if approve:
        return Decision(Effect.REQUIRE_APPROVAL, tuple(approve + notes))
    return Decision(Effect.ALLOW, tuple(notes))


def _denials(facts: Facts) -> list[str]:
    tool = facts.tool
    checks = [
        (not facts.actor_active, "actor.inactive"),
        (not facts.may_use_agent, "agent.forbidden"),
        (not facts.agent_enabled, "agent.disabled"),
        (not facts.may_use_route, "route.forbidden"),
        (not facts.residency_ok, "residency.no_region"),
        (facts.budget == BudgetState.EXHAUSTED, "budget.exhausted"),
    ]
    checks += [
        (v.action == VerdictAction.BLOCK, f"guardrail.{v.guardrail}.block") for v in facts.verdicts
    ]
    if tool is not None:
        checks += [
            (not tool.may_use, "tool.forbidden"),
            (not tool.enabled, "tool.disabled"),
            (not tool.arguments_valid, "tool.arguments_invalid"),
            (tool.approval_state == ApprovalState.REJECTED, "approval.rejected"),
            (tool.approval_state == ApprovalState.EXPIRED, "approval.expired"),
            (tool.approval_state == ApprovalState.STALE, "approval.stale"),
        ]
    return list(dict.fromkeys(reason for failed, reason in checks if failed))


def _approvals_and_notes(facts: Facts) -> tuple[list[str], list[str]]:
    tool = facts.tool
    approve: list[str] = []
    notes: list[str] = []
    for verdict in facts.verdicts:
        if verdict.action == VerdictAction.FLAG:
            notes.append(f"guardrail.{verdict.guardrail}.flag")
        elif verdict.action == VerdictAction.APPROVE:
            if tool is None:  # starting a run: it applies to the run's next tool call
                notes.append(f"guardrail.{verdict.guardrail}.approve_next")
            else:
                approve.append(f"guardrail.{verdict.guardrail}.approve")
    if facts.budget == BudgetState.SOFT:
        notes.append("budget.soft_limit")
    if tool is not None:
        # The call's choice or its arguments may follow what it read: a reviewer decides,
        # whatever the tool's own setting says (an injected order obeyed by the model).
        if tool.risk == "read":
            notes += ["provenance.untrusted_read"] if facts.untrusted else []
        else:
            approve += [f"provenance.untrusted:{source}" for source in facts.untrusted]
        if tool.approval == "always":
            approve.append("tool.approval_always")
        elif tool.risk == "critical":  # "never" does not reach critical tools
            approve.append("tool.risk_critical")
        elif tool.approval == "never":
            notes.append("tool.approval_never")
        elif tool.risk == "write":
            approve.append("tool.risk_write")
        else:
            notes.append("tool.risk_read")
        if approve and tool.approval_state == ApprovalState.APPROVED:
            return [], ["approval.granted", *approve, *notes]
    return list(dict.fromkeys(approve)), list(dict.fromkeys(notes))


_EXPLAINED = {
    "actor.inactive": "your account is not active",
    "agent.disabled": "the agent {agent} is disabled",
    "route.forbidden": "the agent's model is not available to you; ask a governance admin",
    "residency.no_region": "no deployment of the agent's model is in a region allowed for you",
    "budget.exhausted": "the budget for this is used up",
    "tool.forbidden": "the tool {tool} is not available to you",
    "tool.disabled": "the tool {tool} is disabled",
    "tool.arguments_invalid": "the arguments do not fit the tool {tool}",
    "approval.rejected": "a reviewer rejected the call to {tool}",
    "approval.expired": "nobody approved the call to {tool} in time: the request expired",
    "approval.stale": "the tool {tool} changed after the call was approved",
}


_WHY_APPROVAL = {
    "tool.approval_always": "the tool always asks for a reviewer",
    "tool.risk_critical": "the tool is critical: every call is reviewed",
    "tool.risk_write": "the tool changes a system (risk: write)",
    "budget.soft_limit": "a budget's soft limit is reached",
}


def reason_text(reason: str) -> str:
    """One reason of a decision, for a reviewer reading why a call waits for them."""
    if reason.startswith("provenance.untrusted:"):
        return f"it follows untrusted content from {source_text(reason.split(':', 1)[1])}"
    if reason == "provenance.untrusted_read":
        return "it follows untrusted content (a read-only tool: allowed)"
    if reason.startswith("guardrail."):
        _, guardrail, action = reason.split(".", 2)
        verb = {"approve": "asks for a reviewer", "flag": "flagged it"}.get(action, action)
        return f"the {guardrail} guardrail {verb}"
    return _WHY_APPROVAL.get(reason) or _EXPLAINED.get(reason, reason).format(agent="", tool="")


def source_text(source: str) -> str:
    """A taint source (`kb/<slug>`, `tool/<name>`) in words."""
    kind, _, name = source.partition("/")
    if kind == "kb":
        return f"the knowledge base \u201c{name}\u201d"
    if kind == "tool":
        return f"the output of the tool {name}"
    return source


def explain(decision: Decision, *, agent: str = "", tool: str = "") -> str:
    """The reasons of a denial, for the person refused. A forbidden agent reads as a missing
    one and hides every other reason (missing and forbidden look the same)."""
    if "agent.forbidden" in decision.reasons:
        return "no such agent"
    parts = []
    for reason in decision.reasons:
        if reason.startswith("guardrail.") and reason.endswith(".block"):
            parts.append(f"the {reason.split('.')[1]} guardrail blocked it")
        elif reason in _EXPLAINED:
            parts.append(_EXPLAINED[reason].format(agent=agent, tool=tool))
    return "; ".join(parts) or "refused by policy"
