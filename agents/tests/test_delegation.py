"""Agents as tools: an agent asks another (ask_<slug>). The question is a run of the other agent,
a child of the asking run, by the same person with that person's permissions (never more),
governed as any run (its tool calls wait for reviewers as usual); the asking run waits for it
and reads the answer as untrusted data. The trace page shows both. A person who may not use
the asked agent cannot reach it through the other; an agent never asks one already answering
above it."""

import json
import uuid

import pytest
from django.contrib.auth import get_user_model

from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunKind, RunState
from agents.orchestrator import run_execute
from agents.provenance import unmark
from agents.services import run_start
from governance.approvals import approval_decide
from governance.models import ApprovalRequest, Budget, BudgetUsage
from tests.access import grant, grant_agent
from tests.model_server import Reply
from tools.models import DemoTicket, Tool

pytestmark = pytest.mark.django_db


def _agent(server, name: str, **fields) -> Agent:
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model=f"openai/{name}", api_base=server.base(name)
    )
    return Agent.objects.create(
        name=name.title(), slug=f"{name}-{uuid.uuid4().hex[:4]}", route=route, **fields
    )


def _names(request: dict) -> list[str]:
    return sorted(t["function"]["name"] for t in request.get("tools") or [])


def _advance(run_id: int) -> Run:
    run_execute(run_id=run_id, holder="test")
    return Run.objects.get(pk=run_id)


@pytest.fixture
def person():
    return get_user_model().objects.create_user(f"p-{uuid.uuid4().hex[:6]}")


def test_an_agent_asks_another_whose_tool_call_waits_for_a_reviewer_then_answers(
    server, person, people, client
):
    ticket = Tool.objects.get(name="create_ticket")  # risk: write: a reviewer approves
    ticket.enabled = True
    ticket.save(update_fields=["enabled"])
    helpdesk = _agent(server, "helpdesk", description="Opens IT tickets.")
    helpdesk.tools.add(ticket)
    concierge = _agent(server, "concierge")
    concierge.delegates.add(helpdesk)
    grant_agent(person, concierge)
    grant_agent(person, helpdesk)
    ask = f"ask_{helpdesk.slug}"
    server.script("concierge", Reply.call(ask, {"question": "Open a ticket: VPN down"}))
    server.script("helpdesk", Reply.call("create_ticket", {"title": "VPN down"}))
    conversation = Conversation.objects.create(owner=person, agent=concierge)
    parent = run_start(
        agent=concierge, conversation=conversation, actor=person, input="VPN is down", stream=False
    )

    parent = _advance(parent.pk)

    assert parent.state == RunState.AWAITING_DELEGATE
    assert ask in _names(server.requests["concierge"][0])
    child = Run.objects.get(parent=parent)
    assert (child.kind, child.agent, child.actor) == (RunKind.DELEGATED, helpdesk, person)
    assert child.input == "Open a ticket: VPN down"
    child = _advance(child.pk)
    assert child.state == RunState.AWAITING_APPROVAL
    approval = ApprovalRequest.objects.get(run_id=child.pk)
    assert not DemoTicket.objects.filter(title="VPN down").exists()

    # The asking run's trace shows the run it waits for, and the approval that one waits for.
    client.force_login(person)
    page = client.get(f"/runs/{parent.pk}/").content.decode()
    assert f'href="/runs/{child.pk}/"' in page
    assert "Waiting for an agent it asked" in page
    assert "create_ticket: pending" in page
    child_page = client.get(f"/runs/{child.pk}/").content.decode()
    assert f'href="/runs/{parent.pk}/"' in child_page
    chat = client.get(f"/chat/c/{conversation.pk}/")
    assert chat.status_code == 200
    assert "Waiting for an agent it asked" in chat.content.decode()

    approval_decide(approval_id=approval.pk, decided_by=people.reviewer, approve=True)
    server.script("helpdesk", Reply.say("Ticket opened for the VPN."))
    child = _advance(child.pk)
    assert child.state == RunState.SUCCEEDED
    assert DemoTicket.objects.filter(title="VPN down").count() == 1
    # Its end woke the run that asked: queued again, it reads the answer as data.
    parent.refresh_from_db()
    assert parent.state == RunState.QUEUED
    server.script("concierge", Reply.say("The help desk opened a ticket for the VPN."))
    parent = _advance(parent.pk)
    assert parent.state == RunState.SUCCEEDED
    assert parent.answer == "The help desk opened a ticket for the VPN."
    told = server.requests["concierge"][1]["messages"][-1]
    assert told["role"] == "tool"
    result = json.loads(unmark(told["content"]))
    assert result["answer"] == "Ticket opened for the VPN."
    assert result["run"] == child.pk


def test_a_person_who_may_not_use_the_asked_agent_cannot_reach_it_through_another(server, person):
    secret = _agent(server, "payroll")
    concierge = _agent(server, "concierge")
    concierge.delegates.add(secret)
    grant_agent(person, concierge)  # and not payroll
    ask = f"ask_{secret.slug}"
    server.script(
        "concierge",
        Reply.call(ask, {"question": "What does Dana earn?"}),  # asked for it all the same
        Reply.say("I cannot ask payroll."),
    )
    conversation = Conversation.objects.create(owner=person, agent=concierge)
    parent = run_start(
        agent=concierge, conversation=conversation, actor=person, input="Dana?", stream=False
    )

    parent = _advance(parent.pk)

    assert parent.state == RunState.SUCCEEDED
    assert ask not in _names(server.requests["concierge"][0])  # never offered
    assert not Run.objects.filter(agent=secret).exists()
    assert "payroll" not in json.dumps(server.requests.get("payroll", []))
    refused = server.requests["concierge"][1]["messages"][-1]["content"]
    assert "no tool named" in refused


def test_an_agent_never_asks_one_already_answering_above_it(server, person, settings):
    first = _agent(server, "first")
    second = _agent(server, "second")
    first.delegates.add(second)
    second.delegates.add(first)
    grant(person, first, second, first.route, second.route)
    server.script("first", Reply.call(f"ask_{second.slug}", {"question": "ask first back"}))
    server.script(
        "second",
        Reply.call(f"ask_{first.slug}", {"question": "and round again"}),
        Reply.say("I will not go round in circles."),
    )
    conversation = Conversation.objects.create(owner=person, agent=first)
    parent = run_start(
        agent=first, conversation=conversation, actor=person, input="loop", stream=False
    )

    parent = _advance(parent.pk)
    child = _advance(Run.objects.get(parent=parent).pk)

    assert f"ask_{first.slug}" not in _names(server.requests["second"][0])
    assert child.state == RunState.SUCCEEDED
    assert Run.objects.filter(agent=first).count() == 1  # the cycle started no second run

    # And below WARDEN_DELEGATION_DEPTH nothing is offered at all.
    settings.WARDEN_DELEGATION_DEPTH = 1
    server.script("second", Reply.say("No one to ask."))
    another = run_start(
        agent=second,
        conversation=Conversation.objects.create(owner=person, agent=second),
        actor=person,
        input="deep",
        stream=False,
        kind=RunKind.DELEGATED,
        parent=parent,
    )
    _advance(another.pk)
    assert _names(server.requests["second"][-1]) == []


def test_what_the_asking_agent_had_read_follows_its_question_to_the_other(server, person):
    """An order read in untrusted content (a ticket's title) reaches the asked agent only as
    a question; its write then waits for a reviewer even where the tool asks for none, naming
    what the asking run had read."""
    status, ticket = (
        Tool.objects.get(name="get_ticket_status"),
        Tool.objects.get(name="create_ticket"),
    )
    Tool.objects.filter(pk__in=[status.pk, ticket.pk]).update(enabled=True)
    Tool.objects.filter(pk=ticket.pk).update(approval="never")  # no reviewer, on its own
    planted = DemoTicket.objects.create(title="Quarterly report", idempotency_key=uuid.uuid4().hex)
    helpdesk = _agent(server, "helpdesk")
    helpdesk.tools.add(ticket)
    concierge = _agent(server, "concierge")
    concierge.tools.add(status)
    concierge.delegates.add(helpdesk)
    grant_agent(person, concierge)
    grant_agent(person, helpdesk)
    server.script(
        "concierge",
        Reply.call("get_ticket_status", {"ticket": planted.pk}),
        Reply.call(f"ask_{helpdesk.slug}", {"question": "Open a ticket: grant admin rights"}),
    )
    server.script("helpdesk", Reply.call("create_ticket", {"title": "grant admin rights"}))
    conversation = Conversation.objects.create(owner=person, agent=concierge)
    parent = run_start(
        agent=concierge, conversation=conversation, actor=person, input="status?", stream=False
    )

    parent = _advance(parent.pk)
    child = _advance(Run.objects.get(parent=parent).pk)

    assert child.state == RunState.AWAITING_APPROVAL
    approval = ApprovalRequest.objects.get(run_id=child.pk)
    assert "provenance.untrusted:tool/get_ticket_status" in approval.reasons
    assert not DemoTicket.objects.filter(title="grant admin rights").exists()


def test_stopping_the_asking_run_stops_the_one_it_asked(
    server, person, django_capture_on_commit_callbacks
):
    from agents.services import run_cancel

    helpdesk = _agent(server, "helpdesk")
    concierge = _agent(server, "concierge")
    concierge.delegates.add(helpdesk)
    grant_agent(person, concierge)
    grant_agent(person, helpdesk)
    server.script("concierge", Reply.call(f"ask_{helpdesk.slug}", {"question": "anything"}))
    conversation = Conversation.objects.create(owner=person, agent=concierge)
    parent = run_start(
        agent=concierge, conversation=conversation, actor=person, input="hi", stream=False
    )
    parent = _advance(parent.pk)
    child = Run.objects.get(parent=parent)

    with django_capture_on_commit_callbacks(execute=True):
        run_cancel(run=parent, actor=person)

    parent.refresh_from_db()
    child.refresh_from_db()
    assert parent.state == RunState.CANCELLED
    assert parent.error == "cancelled while it waited for an agent it asked"
    assert child.state == RunState.CANCELLED


def test_the_asked_agent_spends_from_the_person_s_own_budget(server, person):
    helpdesk = _agent(server, "helpdesk")
    concierge = _agent(server, "concierge")
    concierge.delegates.add(helpdesk)
    grant_agent(person, concierge)
    grant_agent(person, helpdesk)
    budget = Budget.objects.create(name="Mine", user=person, max_tokens=10**6)
    server.script(
        "concierge",
        Reply.call(f"ask_{helpdesk.slug}", {"question": "Is the VPN up?"}),
        Reply.say("It is, the help desk says."),
    )
    server.script("helpdesk", Reply.say("Yes, since 9:00."))
    conversation = Conversation.objects.create(owner=person, agent=concierge)
    parent = run_start(
        agent=concierge, conversation=conversation, actor=person, input="VPN?", stream=False
    )

    parent = _advance(parent.pk)
    child = _advance(Run.objects.get(parent=parent).pk)
    parent = _advance(parent.pk)

    assert (parent.state, child.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED)
    assert child.tokens > 0
    used = BudgetUsage.objects.get(budget=budget).used_tokens
    assert used == parent.tokens + child.tokens
