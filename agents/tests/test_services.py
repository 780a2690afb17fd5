import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunState
from agents.orchestrator import run_execute
from agents.services import RunError, permission_fingerprint, run_start
from agents.versions import version_record
from governance.models import Budget, BudgetUsage
from tests.access import grant_agent
from tests.model_server import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(member):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(name="A", slug=f"a-{uuid.uuid4().hex[:6]}", route=route)
    grant_agent(member, agent)
    return agent


@pytest.fixture
def member():
    return get_user_model().objects.create_user("mia")


def test_the_same_idempotency_key_returns_the_run_it_started(
    agent, member, django_capture_on_commit_callbacks
):
    conversation = Conversation.objects.create(owner=member, agent=agent)

    with django_capture_on_commit_callbacks() as enqueued:
        first = run_start(
            agent=agent, conversation=conversation, actor=member, input="hi", idempotency_key="k1"
        )
    again = run_start(
        agent=agent, conversation=conversation, actor=member, input="hi", idempotency_key="k1"
    )

    assert again.pk == first.pk
    assert Run.objects.count() == 1
    assert len(enqueued) == 1  # enqueued once, after commit (not run: no worker here)


def test_a_run_streams_unless_its_starter_waits_for_the_result(agent, member):
    conversation = Conversation.objects.create(owner=member, agent=agent)

    live = run_start(agent=agent, conversation=conversation, actor=member, input="hi")
    waited = run_start(
        agent=agent, conversation=conversation, actor=member, input="hi", stream=False
    )

    assert Run.objects.get(pk=live.pk).stream is True
    assert Run.objects.get(pk=waited.pk).stream is False


def test_someone_elses_conversation_is_refused_like_a_missing_one(agent, member):
    other = get_user_model().objects.create_user("oscar")
    conversation = Conversation.objects.create(owner=other, agent=agent)

    with pytest.raises(RunError, match="no such conversation"):
        run_start(agent=agent, conversation=conversation, actor=member, input="hi")

    assert not Run.objects.exists()


def test_a_disabled_agent_or_an_empty_message_is_refused(agent, member):
    conversation = Conversation.objects.create(owner=member, agent=agent)

    with pytest.raises(RunError, match="the message is empty"):
        run_start(agent=agent, conversation=conversation, actor=member, input="  ")
    agent.enabled = False
    agent.save()
    with pytest.raises(RunError, match="is disabled"):
        run_start(agent=agent, conversation=conversation, actor=member, input="hi")

    assert not Run.objects.exists()


def test_cache_scope_follows_permissions_not_identity():
    users = get_user_model().objects
    reviewers = Group.objects.create(name="Reviewer")
    ann, bob, cid = users.create_user("ann"), users.create_user("bob"), users.create_user("cid")
    ann.groups.add(reviewers)
    bob.groups.add(reviewers)

    assert permission_fingerprint(ann) == permission_fingerprint(bob)  # may share answers
    assert permission_fingerprint(ann) != permission_fingerprint(cid)  # may not


def test_starting_a_run_takes_a_fixed_number_of_queries(
    agent, member, django_assert_num_queries, django_capture_on_commit_callbacks
):
    """Two statements for the version that serves it (the agent unchanged since its newest
    version, then that version: agents.versions), one for the start decision (agent and route
    access, team regions, budgets: governance.snapshot), then the conversation's last
    activity, the run, its message and its two audit events (one statement), in a savepoint:
    a count pinned so a new check shows up here as the cost it is."""
    conversation = Conversation.objects.create(owner=member, agent=agent)
    version_record(agent=agent, actor=None)
    agent = Agent.objects.select_related("route").get(pk=agent.pk)

    with django_capture_on_commit_callbacks(), django_assert_num_queries(9):
        run_start(agent=agent, conversation=conversation, actor=member, input="hi")


def test_starting_a_budgeted_run_reads_its_budgets_in_one_query(
    agent, member, django_assert_num_queries, django_capture_on_commit_callbacks
):
    """The budgets' use this period is one read (governance.budgets._usages_now), whatever
    the number of budgets, and writes nothing: the period's rows come with a reservation."""
    Budget.objects.create(name="Mine", user=member, max_tokens=1000)
    Budget.objects.create(name="Mine today", user=member, max_tokens=100, period="day")
    conversation = Conversation.objects.create(owner=member, agent=agent)
    version_record(agent=agent, actor=None)
    agent = Agent.objects.select_related("route").get(pk=agent.pk)

    with django_capture_on_commit_callbacks(), django_assert_num_queries(10):
        run_start(agent=agent, conversation=conversation, actor=member, input="hi")

    assert not BudgetUsage.objects.exists()


def test_a_one_step_run_takes_a_fixed_number_of_queries(
    server, member, django_assert_num_queries, django_capture_on_commit_callbacks
):
    """The worker's side of a one-step run under a budget, pinned: the lease, the run and what
    it offers, the decision again, the reservation (one statement, run again after the first
    of a period has created the period's row), the model call, the settlement with the step
    (one statement), the finish with its audit event (and no webhook query: no application
    started the run, and the finish says so); the route compiled once (a new route
    here). Counted inside the test's transaction, so with savepoints; the step's checkpoint is
    one statement on its own cursor, which this count does not see
    (agents.services.run_checkpoint)."""
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    agent = Agent.objects.create(name="B", slug=f"b-{uuid.uuid4().hex[:6]}", route=route)
    grant_agent(member, agent)
    Budget.objects.create(name="Mine", user=member, max_tokens=10**6)
    server.default("primary", Reply.say("The VPN is back"))
    conversation = Conversation.objects.create(owner=member, agent=agent)
    with django_capture_on_commit_callbacks():
        run = run_start(
            agent=agent, conversation=conversation, actor=member, input="hi", stream=False
        )

    with django_capture_on_commit_callbacks(), django_assert_num_queries(22):
        run_execute(run_id=run.pk, holder="test")

    run.refresh_from_db()
    assert (run.state, run.answer) == (RunState.SUCCEEDED, "The VPN is back")
