"""Budgets through real runs (reserve before the model call, settle after), a refusal before
the call, the soft mark, the usage a user sees; then residency and rate limits."""

import json
from decimal import Decimal

import pytest
from django.core import mail

from agents.models import Conversation, Run, RunState, RunStep
from agents.orchestrator import run_execute
from agents.services import RateLimited, RunDenied, run_start
from audit.models import AuditEvent
from governance.budgets import (
    BudgetExceeded,
    budget_reserve,
    budget_settle,
    budget_state,
    usage_for,
)
from governance.models import (
    Budget,
    BudgetPeriod,
    BudgetReservation,
    BudgetUsage,
    TeamPolicy,
)
from governance.policy import BudgetState
from tests.model_server import Reply

pytestmark = pytest.mark.django_db


def ask(agent, user, text="hello") -> Run:
    conversation = Conversation.objects.create(owner=user, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=user, input=text)
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def test_a_run_reserves_then_settles_what_it_used_on_every_budget_that_applies(
    server, assistant, people, team
):
    mine = Budget.objects.create(name="Mine", user=people.member, max_tokens=100_000)
    teams = Budget.objects.create(name="Sales", group=team, max_cost=Decimal("50"))
    agents = Budget.objects.create(
        name="Assistant", agent_id=assistant.pk, max_tokens=100_000, period=BudgetPeriod.DAY
    )
    server.script("primary", Reply.say("Hi.", prompt_tokens=30, completion_tokens=12))

    run = ask(assistant, people.member)

    assert run.state == RunState.SUCCEEDED
    used = {u.budget_id: u for u in BudgetUsage.objects.all()}
    assert {pk: used[pk].used_tokens for pk in used} == {
        mine.pk: 42,
        teams.pk: 42,
        agents.pk: 42,
    }
    assert used[teams.pk].used_cost == Decimal("0.054")  # 30 x 0.001 + 12 x 0.002
    assert all(u.reserved_tokens == 0 and u.reserved_cost == 0 for u in used.values())
    assert not BudgetReservation.objects.exists()
    # another user's run counts on the team's and the agent's budgets, not on mine
    server.script("primary", Reply.say("Hi.", prompt_tokens=30, completion_tokens=12))
    ask(assistant, people.integration)  # not in the team
    assert BudgetUsage.objects.get(budget=mine).used_tokens == 42
    assert BudgetUsage.objects.get(budget=teams).used_tokens == 42
    assert BudgetUsage.objects.get(budget=agents).used_tokens == 84


def test_a_hard_budget_refuses_before_the_call_with_a_clear_message(server, assistant, people):
    Budget.objects.create(name="Trial", user=people.member, max_tokens=300)

    run = ask(assistant, people.member)

    assert run.state == RunState.REJECTED
    assert run.error.startswith("the monthly budget 'Trial' has no room for this (0 of 300 tokens")
    assert "it renews on" in run.error
    assert server.count("primary") == 0  # refused before the call
    assert not RunStep.objects.filter(run=run).exists()
    # nothing held (the period's row exists only once a reservation has needed it)
    assert not BudgetUsage.objects.filter(reserved_tokens__gt=0).exists()
    assert not BudgetReservation.objects.exists()
    decided = AuditEvent.objects.get(
        run=str(run.pk), action="policy.decided", data__contains="resume"
    )
    assert json.loads(decided.data)["reasons"] == ["budget.exhausted"]


def test_a_reservation_holds_on_every_budget_or_on_none(people, team, assistant):
    """One budget without room refuses the call and nothing is held on the others, whichever
    order they come in; a retried step's key holds nothing more; settling twice settles once."""
    roomy = Budget.objects.create(name="Mine", user=people.member, max_tokens=10_000)
    daily = Budget.objects.create(
        name="Agent", agent_id=assistant.pk, max_tokens=10_000, period=BudgetPeriod.DAY
    )
    tight = Budget.objects.create(name="Sales", group=team, max_tokens=500)
    ids = [tight.pk, daily.pk, roomy.pk]

    first = budget_reserve(budget_ids=ids, key="run:1:step:0", tokens=400, cost=Decimal("0.1"))
    again = budget_reserve(budget_ids=ids, key="run:1:step:0", tokens=400, cost=Decimal("0.1"))
    with pytest.raises(BudgetExceeded, match="'Sales' has no room for this \\(400 of 500"):
        budget_reserve(budget_ids=ids, key="run:2:step:0", tokens=200, cost=Decimal("0.1"))

    usages = BudgetUsage.objects.order_by("budget_id")
    assert sorted(first.usage_ids) == sorted(again.usage_ids) == [u.pk for u in usages]
    assert [(u.budget_id, u.reserved_tokens, str(u.reserved_cost)) for u in usages] == [
        (roomy.pk, 400, "0.100000"),
        (daily.pk, 400, "0.100000"),
        (tight.pk, 400, "0.100000"),
    ]
    assert set(BudgetReservation.objects.values_list("key", flat=True)) == {"run:1:step:0"}
    assert BudgetReservation.objects.count() == 3

    budget_settle(key="run:1:step:0", tokens=350, cost=Decimal("0.05"))
    budget_settle(key="run:1:step:0", tokens=350, cost=Decimal("0.05"))

    assert [(u.used_tokens, u.reserved_tokens, str(u.used_cost)) for u in usages.all()] == [
        (350, 0, "0.050000"),
    ] * 3
    assert not BudgetReservation.objects.exists()
    # the room the settled call gave back is there for the next one
    budget_reserve(budget_ids=ids, key="run:2:step:0", tokens=150, cost=Decimal(0))
    assert BudgetUsage.objects.get(budget=tight).reserved_tokens == 150


def test_a_used_up_budget_refuses_the_run_at_the_start(server, assistant, people):
    budget = Budget.objects.create(name="Trial", user=people.member, max_tokens=300)
    BudgetUsage.objects.create(
        budget=budget, period_start=budget_period_start(budget), used_tokens=300
    )
    conversation = Conversation.objects.create(owner=people.member, agent=assistant)

    with pytest.raises(RunDenied, match="the monthly budget 'Trial' has no room for this"):
        run_start(agent=assistant, conversation=conversation, actor=people.member, input="hi")

    assert not Run.objects.exists()
    # a soft budget only notes it
    budget.hard = False
    budget.save(update_fields=["hard"])
    assert budget_state(budget_ids=[budget.pk]) == BudgetState.SOFT


def budget_period_start(budget):
    from django.utils import timezone

    from governance.budgets import period_start

    return period_start(budget.period, timezone.localdate())


def test_passing_the_notify_mark_tells_the_user_once(
    server, assistant, people, django_capture_on_commit_callbacks
):
    from config.celery import app

    budget = Budget.objects.create(
        name="Mine", user=people.member, max_tokens=10_000, notify_at_percent=1
    )
    server.default("primary", Reply.say("Hi.", prompt_tokens=80, completion_tokens=40))
    eager, app.conf.task_always_eager = app.conf.task_always_eager, True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            ask(assistant, people.member)
            ask(assistant, people.member)
    finally:
        app.conf.task_always_eager = eager

    reached = AuditEvent.objects.filter(action="budget.threshold_reached")
    assert reached.count() == 1
    assert json.loads(reached.get().data)["percent_used"] == 1.2
    assert [m.to for m in mail.outbox] == [["member@example.com"]]
    assert usage_for(people.member) == [
        {
            "budget": "Mine",
            "period": "month",
            "since": budget_period_start(budget),
            "renews": usage_for(people.member)[0]["renews"],
            "used_tokens": 240,
            "max_tokens": 10_000,
            "used_cost": Decimal("0.320000"),  # twice 80 x 0.001 + 40 x 0.002
            "max_cost": None,
            "percent": 2.4,
        }
    ]
    assert usage_for(people.member)[0]["renews"] > budget_period_start(budget)


# Residency


def test_the_gateway_only_uses_deployments_in_the_teams_regions(server, assistant, people, team):
    TeamPolicy.objects.create(group=team, allowed_regions=["eu"])
    server.script("eu", Reply.say("Bonjour."))

    run = ask(assistant, people.member)

    assert run.state == RunState.SUCCEEDED
    assert (server.count("primary"), server.count("eu")) == (0, 1)
    assert RunStep.objects.get(run=run).deployment == f"{assistant.route.name}#2"


def test_no_allowed_region_is_a_clear_refusal_and_no_call(server, assistant, people, team):
    TeamPolicy.objects.create(group=team, allowed_regions=["eu"])
    assistant.allowed_regions = ["us"]
    assistant.save(update_fields=["allowed_regions"])
    conversation = Conversation.objects.create(owner=people.member, agent=assistant)

    with pytest.raises(RunDenied, match="no deployment of the agent's model is in a region"):
        run_start(agent=assistant, conversation=conversation, actor=people.member, input="hi")

    assert not Run.objects.exists()
    assert server.count("primary") + server.count("eu") == 0
    # the integration account is in no team: the agent's own rule leaves it "us"
    server.script("primary", Reply.say("Hello."))
    assert ask(assistant, people.integration).state == RunState.SUCCEEDED


# Rate limits


def test_runs_per_user_and_per_agent_are_limited(assistant, people):
    assistant.runs_per_user_per_minute = 2
    assistant.runs_per_minute = 3
    assistant.save(update_fields=["runs_per_user_per_minute", "runs_per_minute"])

    def start(user):
        conversation = Conversation.objects.create(owner=user, agent=assistant)
        return run_start(agent=assistant, conversation=conversation, actor=user, input="hi")

    start(people.member)
    start(people.member)
    with pytest.raises(RateLimited, match="at most 2 runs a minute by one user") as third:
        start(people.member)
    start(people.integration)
    with pytest.raises(RateLimited, match="at most 3 runs a minute for everybody together"):
        start(people.integration)

    assert 0 < third.value.retry_after <= 60
    assert Run.objects.count() == 3


def test_a_user_sees_their_budgets_use_on_the_home_page(client, server, assistant, people, team):
    Budget.objects.create(name="Sales team", group=team, max_tokens=1_000)
    server.script("primary", Reply.say("Hi.", prompt_tokens=30, completion_tokens=12))
    ask(assistant, people.member)
    client.force_login(people.member)

    page = client.get("/").content.decode()

    assert "Sales team" in page
    assert "42 tokens, $0.0540 (4.2%)" in page
    assert "1000 tokens" in page
