"""Budgets under concurrency, committing for real from many threads: reservations never pass a
hard limit together, and concurrent runs cannot overspend it by more than one reservation."""

import threading
from decimal import Decimal

import pytest
from django.db import connection

from agents.models import Conversation, Run, RunState, RunStep
from agents.orchestrator import run_execute
from agents.services import run_start
from governance.budgets import BudgetExceeded, budget_reserve
from governance.models import Budget, BudgetReservation, BudgetUsage
from tests.model_server import Reply

pytestmark = pytest.mark.usefixtures("committing_db")


def together(count: int, work) -> list:
    """Run `work(i)` in `count` threads released at once; each result or exception."""
    start = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_reservations_never_pass_a_hard_limit_together(people):
    budget = Budget.objects.create(name="Team", user=people.member, max_tokens=1_000)

    results = together(
        20,
        lambda i: budget_reserve(
            budget_ids=[budget.pk], key=f"run:{i}:step:0", tokens=100, cost=Decimal(0)
        ),
    )

    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(results) - len(refused), len(refused)) == (10, 10)
    assert BudgetUsage.objects.get().reserved_tokens == 1_000
    assert BudgetReservation.objects.count() == 10


def test_many_concurrent_runs_cannot_overspend_a_budget(server, assistant, people, team):
    agent = assistant
    limit = 1_500  # each call reserves ~540 tokens (the prompt and 512 for the answer)
    budget = Budget.objects.create(name="Team", group=team, max_tokens=limit)
    server.default("primary", Reply.say("Done.", prompt_tokens=20, completion_tokens=10, delay=0.3))
    runs = []
    for i in range(12):
        conversation = Conversation.objects.create(owner=people.member, agent=agent)
        runs.append(
            run_start(agent=agent, conversation=conversation, actor=people.member, input=f"q{i}")
        )

    together(len(runs), lambda i: run_execute(run_id=runs[i].pk, holder=f"worker-{i}"))

    states = [Run.objects.get(pk=run.pk).state for run in runs]
    usage = BudgetUsage.objects.get(budget=budget)
    succeeded = states.count(RunState.SUCCEEDED)
    assert succeeded + states.count(RunState.REJECTED) == len(runs)
    assert succeeded == server.count("primary") >= 1  # refused runs never called the model
    assert states.count(RunState.REJECTED) >= 1
    assert not RunStep.objects.filter(run__state=RunState.REJECTED).exists()
    assert usage.used_tokens == 30 * succeeded <= limit
    assert (usage.reserved_tokens, BudgetReservation.objects.count()) == (0, 0)
