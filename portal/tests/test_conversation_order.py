"""The conversation list ordered by last activity: a message asked or an answer landed (or
released by a reviewer) moves its conversation first, in the transaction that writes it."""

import uuid

import pytest

from agents.models import Agent, Conversation, Deployment, ModelRoute, Run
from agents.orchestrator import run_execute
from agents.selectors import conversations_of
from agents.services import run_start
from audit.services import SYSTEM
from governance.approvals import escalation_decide
from governance.models import Action, Escalation
from governance.services import access_grant
from tests.model_server import Reply

pytestmark = pytest.mark.django_db
JSON = {"HTTP_ACCEPT": "application/json"}


def send(client, agent, text, conversation=None):
    data = {"agent": agent.pk, "text": text}
    if conversation is not None:
        data["conversation"] = conversation.pk
    response = client.post("/chat/send/", data, **JSON)
    assert response.status_code == 201, response.content
    return Run.objects.get(pk=response.json()["run"])


def listed(client, url, ids):
    """The conversations among `ids`, in the order the page at `url` links them."""
    page = client.get(url).content.decode()
    found = {pk: page.find(f'href="/chat/c/{pk}/"') for pk in ids}
    assert all(at >= 0 for at in found.values()), found
    return sorted(ids, key=found.__getitem__)


def test_a_new_message_brings_the_older_conversation_first(client, people, help_desk):
    client.force_login(people.member)
    older = send(client, help_desk, "first question").conversation
    newer = send(client, help_desk, "second question").conversation
    assert list(conversations_of(people.member)) == [newer, older]
    before = Conversation.objects.get(pk=older.pk).updated_at

    send(client, help_desk, "a follow-up", conversation=older)

    assert Conversation.objects.get(pk=older.pk).updated_at > before
    assert list(conversations_of(people.member)) == [older, newer]
    ids = [older.pk, newer.pk]
    assert listed(client, "/chat/", ids) == [older.pk, newer.pk]


def test_a_refused_message_does_not_move_the_conversation(client, people, help_desk):
    client.force_login(people.member)
    conversation = send(client, help_desk, "first question").conversation
    before = Conversation.objects.get(pk=conversation.pk).updated_at

    refused = client.post(
        "/chat/send/",
        {"agent": help_desk.pk, "text": "  ", "conversation": conversation.pk},
        **JSON,
    )

    assert refused.status_code == 400
    assert Conversation.objects.get(pk=conversation.pk).updated_at == before


def test_an_answer_landing_brings_its_conversation_first(client, people, help_desk, server):
    server.script("primary", Reply.say("Restart the VPN client."))
    client.force_login(people.member)
    asked = send(client, help_desk, "my VPN is down")
    newer = send(client, help_desk, "another question").conversation
    assert list(conversations_of(people.member)) == [newer, asked.conversation]

    run_execute(run_id=asked.pk, holder="test")

    assert Run.objects.get(pk=asked.pk).state == "succeeded"
    assert list(conversations_of(people.member)) == [asked.conversation, newer]


def test_a_released_answer_brings_its_conversation_first(people, team, server):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(
        name="Notes", slug=f"n-{uuid.uuid4().hex[:6]}", route=route, confidence_threshold=1
    )
    for obj in (agent, route):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
    held_in = Conversation.objects.create(owner=people.member, agent=agent)
    run = run_start(agent=agent, conversation=held_in, actor=people.member, input="founded?")
    run_execute(run_id=run.pk, holder="test")
    assert Run.objects.get(pk=run.pk).state == "awaiting_review"
    newer = Conversation.objects.create(owner=people.member, agent=agent)
    assert list(conversations_of(people.member)) == [newer, held_in]

    escalation = Escalation.objects.get(run_id=run.pk)
    escalation_decide(
        escalation_id=escalation.pk, decided_by=people.reviewer, release=True, answer="In 1998."
    )

    assert list(conversations_of(people.member)) == [held_in, newer]
