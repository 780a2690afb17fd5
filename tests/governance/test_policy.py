"""The policy decision point as tables: each row states the facts and the decision expected.

The last table puts real people in the rows: their facts come from the access checks (so from
roles, teams, grants and denials), crossed with every risk tier, approval setting and verdict.
"""

import itertools

import pytest

from agents.services import run_start_facts
from governance.policy import (
    ApprovalState,
    BudgetState,
    Decision,
    Effect,
    Facts,
    ToolFacts,
    Verdict,
    VerdictAction,
    decide,
    explain,
)
from tests.personas import PERSONAS

ALLOW, APPROVE, DENY = Effect.ALLOW, Effect.REQUIRE_APPROVAL, Effect.DENY


def facts(**changes) -> Facts:
    base = {
        "actor_active": True,
        "may_use_agent": True,
        "agent_enabled": True,
        "may_use_route": True,
    }
    return Facts(**{**base, **changes})


def tool(risk="read", approval="tier", **changes) -> ToolFacts:
    return ToolFacts(
        **{"name": "t", "may_use": True, "enabled": True, "risk": risk, "approval": approval}
        | changes
    )


# risk tier by the tool's approval setting → effect and the reason that decides it
TOOL_TABLE = [
    ("read", "tier", ALLOW, "tool.risk_read"),
    ("read", "always", APPROVE, "tool.approval_always"),
    ("read", "never", ALLOW, "tool.approval_never"),
    ("write", "tier", APPROVE, "tool.risk_write"),
    ("write", "always", APPROVE, "tool.approval_always"),
    ("write", "never", ALLOW, "tool.approval_never"),
    ("critical", "tier", APPROVE, "tool.risk_critical"),
    ("critical", "always", APPROVE, "tool.approval_always"),
    ("critical", "never", APPROVE, "tool.risk_critical"),  # "never" does not reach critical
]


@pytest.mark.parametrize(("risk", "approval", "effect", "reason"), TOOL_TABLE)
def test_risk_tier_and_approval_setting(risk, approval, effect, reason):
    assert decide(facts(tool=tool(risk, approval))) == Decision(effect, (reason,))


# verdict action by starting a run or calling a read tool → effect and reasons
VERDICT_TABLE = [
    (VerdictAction.PASS, False, ALLOW, ()),
    (VerdictAction.FLAG, False, ALLOW, ("guardrail.injection.flag",)),
    (VerdictAction.APPROVE, False, ALLOW, ("guardrail.injection.approve_next",)),
    (VerdictAction.BLOCK, False, DENY, ("guardrail.injection.block",)),
    (VerdictAction.PASS, True, ALLOW, ("tool.risk_read",)),
    (VerdictAction.FLAG, True, ALLOW, ("guardrail.injection.flag", "tool.risk_read")),
    (VerdictAction.APPROVE, True, APPROVE, ("guardrail.injection.approve", "tool.risk_read")),
    (VerdictAction.BLOCK, True, DENY, ("guardrail.injection.block",)),
]


@pytest.mark.parametrize(("action", "with_tool", "effect", "reasons"), VERDICT_TABLE)
def test_guardrail_verdicts(action, with_tool, effect, reasons):
    verdicts = (Verdict("injection", action),)

    decision = decide(facts(verdicts=verdicts, tool=tool() if with_tool else None))

    assert decision == Decision(effect, reasons)


DENIAL_TABLE = [
    ({"actor_active": False}, "actor.inactive"),
    ({"may_use_agent": False}, "agent.forbidden"),
    ({"agent_enabled": False}, "agent.disabled"),
    ({"may_use_route": False}, "route.forbidden"),
    ({"residency_ok": False}, "residency.no_region"),
    ({"budget": BudgetState.EXHAUSTED}, "budget.exhausted"),
    ({"tool": tool(may_use=False)}, "tool.forbidden"),
    ({"tool": tool(enabled=False)}, "tool.disabled"),
    ({"tool": tool(arguments_valid=False)}, "tool.arguments_invalid"),
    ({"tool": tool("write", approval_state=ApprovalState.REJECTED)}, "approval.rejected"),
    ({"tool": tool("write", approval_state=ApprovalState.EXPIRED)}, "approval.expired"),
    ({"tool": tool("write", approval_state=ApprovalState.STALE)}, "approval.stale"),
]


@pytest.mark.parametrize(("changes", "reason"), DENIAL_TABLE)
def test_each_denial_alone(changes, reason):
    assert decide(facts(**changes)) == Decision(DENY, (reason,))


def test_every_denial_that_holds_is_listed_and_outranks_approval():
    decision = decide(
        facts(
            may_use_route=False,
            budget=BudgetState.EXHAUSTED,
            verdicts=(Verdict("injection", VerdictAction.APPROVE),),
            tool=tool("critical", enabled=False),
        )
    )

    assert decision == Decision(DENY, ("route.forbidden", "budget.exhausted", "tool.disabled"))


def test_an_approval_for_exactly_this_call_lets_it_run():
    approved = tool("critical", approval_state=ApprovalState.APPROVED)

    assert decide(facts(tool=approved)) == Decision(
        ALLOW, ("approval.granted", "tool.risk_critical")
    )
    # an approval changes nothing for a call that needed none
    assert decide(facts(tool=tool("read", approval_state=ApprovalState.APPROVED))) == Decision(
        ALLOW, ("tool.risk_read",)
    )


def test_a_soft_budget_limit_allows_and_says_so():
    assert decide(facts(budget=BudgetState.SOFT, tool=tool())) == Decision(
        ALLOW, ("budget.soft_limit", "tool.risk_read")
    )


def test_explanations_hide_everything_behind_a_forbidden_agent():
    both = decide(facts(may_use_agent=False, agent_enabled=False))

    assert explain(both, agent="Sales") == "no such agent"
    assert explain(decide(facts(agent_enabled=False)), agent="Sales") == (
        "the agent Sales is disabled"
    )
    assert explain(decide(facts(tool=tool(approval_state=ApprovalState.EXPIRED))), tool="t") == (
        "nobody approved the call to t in time: the request expired"
    )


# People by risk tiers by approval settings by verdicts, with the people's facts from the real
# access checks. Expected: the personas the fixture grants get the tool's own decision (TOOL
# and VERDICT tables above); everyone else is denied the agent before anything else counts.
MAY_USE = {"admin", "member", "integration"}


@pytest.mark.django_db
@pytest.mark.parametrize("persona", PERSONAS)
def test_roles_by_risk_tiers_by_verdicts(people, governed, persona):
    user = people.named(persona)
    start = run_start_facts(actor=user, agent=governed.agent)
    tool_effect = {(risk, setting): effect for risk, setting, effect, _ in TOOL_TABLE}

    for (risk, setting), action in itertools.product(tool_effect, VerdictAction):
        decision = decide(
            Facts(
                actor_active=start.actor_active,
                may_use_agent=start.may_use_agent,
                agent_enabled=start.agent_enabled,
                may_use_route=start.may_use_route,
                verdicts=(Verdict("injection", action),),
                tool=tool(risk, setting),
            )
        )

        if persona not in MAY_USE:
            assert decision.effect == DENY
            assert decision.reasons[0] in {"agent.forbidden", "actor.inactive"}
        elif action == VerdictAction.BLOCK:
            assert decision == Decision(DENY, ("guardrail.injection.block",))
        elif action == VerdictAction.APPROVE:
            assert decision.effect == APPROVE
        else:
            assert decision.effect == tool_effect[(risk, setting)]


# Provenance: a call after untrusted content (the run's taint) by risk tier and approval
# setting: every write or critical call waits, "never" included; reads pass with a note.
UNTRUSTED = ("kb/handbook", "tool/get_ticket_status")
PROVENANCE = ("provenance.untrusted:kb/handbook", "provenance.untrusted:tool/get_ticket_status")
TAINT_TABLE = [
    ("read", "tier", ALLOW, ("provenance.untrusted_read", "tool.risk_read")),
    ("read", "never", ALLOW, ("provenance.untrusted_read", "tool.approval_never")),
    ("read", "always", APPROVE, ("tool.approval_always", "provenance.untrusted_read")),
    ("write", "tier", APPROVE, (*PROVENANCE, "tool.risk_write")),
    ("write", "never", APPROVE, (*PROVENANCE, "tool.approval_never")),
    ("write", "always", APPROVE, (*PROVENANCE, "tool.approval_always")),
    ("critical", "never", APPROVE, (*PROVENANCE, "tool.risk_critical")),
]


@pytest.mark.parametrize(("risk", "approval", "effect", "reasons"), TAINT_TABLE)
def test_a_call_after_untrusted_content(risk, approval, effect, reasons):
    decision = decide(facts(untrusted=UNTRUSTED, tool=tool(risk, approval)))

    assert decision == Decision(effect, reasons)


def test_an_approved_call_after_untrusted_content_runs_and_the_reasons_stay():
    approved = tool("write", "never", approval_state=ApprovalState.APPROVED)

    assert decide(facts(untrusted=UNTRUSTED[:1], tool=approved)) == Decision(
        ALLOW, ("approval.granted", PROVENANCE[0], "tool.approval_never")
    )


def test_untrusted_content_alone_does_not_hold_a_run_start():
    assert decide(facts(untrusted=UNTRUSTED)) == Decision(ALLOW, ())


def test_the_reviewer_reads_which_source_the_call_follows():
    from governance.policy import reason_text

    assert reason_text(PROVENANCE[0]) == (
        "it follows untrusted content from the knowledge base \u201chandbook\u201d"
    )
    assert reason_text(PROVENANCE[1]) == (
        "it follows untrusted content from the output of the tool get_ticket_status"
    )
