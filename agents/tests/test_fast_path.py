"""Which runs take the fast path (advanced on a thread of the web process that waits for them,
agents.orchestrator.runs_here) and which go to a worker. The path itself, end to end through
daphne, is in integrations/tests/test_openai.py."""

import threading
import uuid

import pytest
from django.contrib.auth import get_user_model

from agents.models import Agent, Conversation, Deployment, KnowledgeBase, ModelRoute
from agents.orchestrator import run_here, runs_here
from agents.services import RunContext
from agents.versions import version_agent, version_serving
from governance.policy import Facts
from tests.access import grant, grant_agent
from tools.models import Tool

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent():
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="openai/gpt-4o-mini")
    return Agent.objects.create(name="Desk", slug=f"d-{uuid.uuid4().hex[:6]}", route=route)


@pytest.fixture
def user(agent):
    user = get_user_model().objects.create_user(f"u{uuid.uuid4().hex[:6]}")
    grant_agent(user, agent)
    return user


def _tool(*, enabled=True) -> Tool:
    return Tool.objects.create(
        name=f"t_{uuid.uuid4().hex[:6]}",
        description="Open a ticket.",
        kind="python",
        config={"function": "tools.builtin.create_ticket"},
        parameters={"type": "object", "properties": {}},
        enabled=enabled,
    )


def test_an_agent_that_can_only_answer_runs_here_decided_in_one_query_or_none(
    agent, user, django_assert_num_queries
):
    """A version with nothing to call, read or ask, out of a conversation, needs only to know
    whether it may hold an answer: one query, none if it holds none (a threshold of 0); in a
    conversation (whose files it might read) one query."""
    served = version_agent(agent, version_serving(agent=agent, conversation=None))
    with django_assert_num_queries(1):
        assert runs_here(served, user)
    conversation = Conversation.objects.create(owner=user, agent=agent)
    with django_assert_num_queries(1):
        assert runs_here(served, user, conversation.pk)
    served.confidence_threshold = 0
    with django_assert_num_queries(0):
        assert runs_here(served, user)


def test_a_tool_the_user_may_use_sends_the_run_to_a_worker(agent, user):
    tool = _tool()
    agent.tools.add(tool)
    grant(user, tool)

    assert not runs_here(agent, user)


def test_tools_the_model_would_not_be_shown_keep_it_here(agent, user):
    """The tools the model is offered are the enabled ones the user may use: the others cannot
    be called, so they call for no worker."""
    not_granted, disabled = _tool(), _tool(enabled=False)
    agent.tools.add(not_granted, disabled)
    grant(user, disabled)

    assert runs_here(agent, user)
    assert not runs_here(agent, get_user_model().objects.create_superuser("root"))


def test_a_knowledge_base_sends_the_run_to_a_worker(agent, user):
    """Retrieval embeds the question: a worker's load (it has the model warm), not the web's."""
    base = KnowledgeBase.objects.create(name="Policies", slug="policies", owner=user)
    agent.knowledge_bases.add(base)

    assert not runs_here(agent, user)


def test_an_answer_that_may_be_held_for_review_sends_the_run_to_a_worker(agent, user):
    """Only the offline model reports a confidence, so only a route with it and a threshold
    can hold an answer."""
    agent.confidence_threshold = 0.5
    assert runs_here(agent, user)

    Deployment.objects.create(route=agent.route, position=2, model="warden-local/assistant")
    assert not runs_here(agent, user)

    agent.confidence_threshold = 0
    assert runs_here(agent, user)


def test_a_web_process_past_its_share_of_runs_hands_them_to_the_workers(settings):
    """WARDEN_FAST_PATH_RUNS bounds the runs one web process advances at once: past it, run_here
    starts nothing and says so (agents.services then enqueues the run for a worker)."""
    settings.WARDEN_FAST_PATH_RUNS = 0
    threads = threading.active_count()

    allowed = Facts(actor_active=True, may_use_agent=True, agent_enabled=True, may_use_route=True)
    assert run_here(12345, RunContext(allowed)) is None
    assert threading.active_count() == threads
