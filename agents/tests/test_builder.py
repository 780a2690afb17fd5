"""The agent builder in the admin (agents/builder_admin.py): who may open it, what it shows, an
edit saved and audited as the change page saves it, and test messages that are real runs as
the admin, which the next one after an edit runs with the new prompt."""

import uuid

import pytest
from auditlog.models import LogEntry as FieldHistory
from django.contrib.admin.models import LogEntry as AdminLog
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils.html import escape

from agents.builder_admin import NO_GRANT
from agents.models import Agent, Conversation, Deployment, KnowledgeBase, Run
from agents.orchestrator import run_execute
from tests.model_server import Reply
from tools.models import Tool

pytestmark = pytest.mark.django_db
JSON = {"HTTP_ACCEPT": "application/json"}
OLD_PROMPT = "You are the IT help desk."
NEW_PROMPT = "You are the IT help desk. Answer in one sentence, and never guess."


@pytest.fixture
def agent(help_desk, server, people):
    """The help desk with a prompt, a fallback deployment, a disabled tool it does not offer
    yet and a knowledge base."""
    Agent.objects.filter(pk=help_desk.pk).update(system_prompt=OLD_PROMPT)
    Deployment.objects.create(
        route=help_desk.route,
        position=2,
        model="openai/secondary",
        api_base=server.base("secondary"),
        region="eu",
    )
    Tool.objects.filter(name="get_ticket_status").update(enabled=False)
    base = KnowledgeBase.objects.create(
        name="Runbooks", slug=f"rb-{uuid.uuid4().hex[:6]}", owner=people.admin
    )
    help_desk.knowledge_bases.add(base)
    return Agent.objects.get(pk=help_desk.pk)


def staff(*codenames: str):
    user = get_user_model().objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def builder(agent) -> str:
    return reverse("admin:agents_agent_builder", args=[agent.pk])


def send(client, agent, text, conversation=None):
    data = {"text": text} | ({"conversation": conversation} if conversation else {})
    return client.post(reverse("admin:agents_agent_builder_send", args=[agent.pk]), data, **JSON)


def edit(agent, **changes):
    """The builder's form as the page posts it, with `changes`."""
    data = {
        "system_prompt": agent.system_prompt,
        "route": agent.route_id,
        "tools": [t.pk for t in agent.tools.all()],
        "knowledge_bases": [k.pk for k in agent.knowledge_bases.all()],
        "confidence_threshold": agent.confidence_threshold,
        "passages_per_run": agent.passages_per_run,
        "max_steps": agent.max_steps,
        "max_tokens_per_run": agent.max_tokens_per_run,
    }
    return data | changes


def test_the_builder_refuses_whoever_may_not_change_the_agent(client, agent):
    viewer = staff("view_agent")  # may see the agent in the admin, not change it
    client.force_login(viewer)
    change_page = client.get(reverse("admin:agents_agent_change", args=[agent.pk]))
    assert change_page.status_code == 200
    assert builder(agent) not in change_page.content.decode()  # no link to it

    page = client.get(builder(agent))
    edited = client.post(builder(agent), edit(agent, system_prompt="Obey me."))
    sent = send(client, agent, "Hello")

    missing = client.get(reverse("admin:agents_agent_builder", args=[agent.pk + 1000]))

    assert (page.status_code, edited.status_code, sent.status_code) == (403, 403, 403)
    assert (missing.status_code, missing["Location"]) == (302, "/admin/")  # as the change page
    assert sent.json()["text"] == "Hello"
    assert Agent.objects.get(pk=agent.pk).system_prompt == OLD_PROMPT
    assert not AdminLog.objects.exists()
    assert not FieldHistory.objects.get_for_object(agent).filter(actor=viewer).exists()
    assert not Run.objects.exists()
    assert not Conversation.objects.exists()


def test_the_builder_shows_the_prompt_route_tools_knowledge_and_thresholds(
    client, people, agent, django_assert_max_num_queries
):
    client.force_login(people.admin)
    change_page = client.get(reverse("admin:agents_agent_change", args=[agent.pk]))
    assert f'href="{builder(agent)}"' in change_page.content.decode()

    with django_assert_max_num_queries(16):  # 15, and the live and newest versions
        response = client.get(builder(agent))

    assert response.status_code == 200
    page = response.content.decode()
    assert f"{OLD_PROMPT}</textarea>" in page
    assert f"Deployments of {agent.route.name}" in page
    assert "<code>openai/primary</code></td><td>any</td><td>primary</td>" in page
    assert "<code>openai/secondary</code></td><td>eu</td><td>fallback 1</td>" in page
    tools = response.context["tool_rows"]
    offered = {row.obj.name: row for row in tools}
    assert offered["create_ticket"].box.data["selected"] is True
    assert offered["get_ticket_status"].box.data["selected"] is False
    assert offered["create_ticket"].obj.requires_approval  # a write tool
    assert "needs approval</span>" in page
    assert ">disabled</span>" in page
    [base] = [row for row in response.context["base_rows"] if row.obj.name == "Runbooks"]
    assert base.box.data["selected"] is True
    assert base.yours
    assert 'id="id_confidence_threshold"' in page
    assert 'value="0.80"' in page
    route_page = reverse("admin:agents_modelroute_change", args=[agent.route_id])
    assert f'<a href="{route_page}">Change the route {agent.route.name}' in page
    assert 'id="composer"' in page
    assert 'id="history"' in page
    assert "Ask Help desk something to test it." in page


def test_an_edit_is_saved_audited_and_the_next_test_message_uses_it(client, people, agent, server):
    client.force_login(people.admin)
    server.script("primary", Reply.say("Before."), Reply.say("After."))
    first = send(client, agent, "Is the VPN down?")
    assert first.status_code == 201
    run = Run.objects.get(pk=first.json()["run"])
    assert (run.actor, run.agent, run.stream) == (people.admin, agent, True)
    conversation = run.conversation_id
    assert first.json()["url"] == f"{builder(agent)}?conversation={conversation}"
    run_execute(run_id=run.pk, holder="test")
    assert server.requests["primary"][-1]["messages"][0] == {
        "role": "system",
        "content": OLD_PROMPT,
    }
    status_tool = Tool.objects.get(name="get_ticket_status")

    saved = client.post(
        f"{builder(agent)}?conversation={conversation}",
        edit(
            agent,
            system_prompt=NEW_PROMPT,
            tools=[t.pk for t in agent.tools.all()] + [status_tool.pk],
        ),
    )

    assert saved.status_code == 302
    assert saved["Location"] == f"{builder(agent)}?conversation={conversation}"
    agent.refresh_from_db()
    assert agent.system_prompt == NEW_PROMPT
    assert set(agent.tools.values_list("name", flat=True)) == {"create_ticket", "get_ticket_status"}
    # Audited as the change page audits: the field history and the admin's log.
    history = FieldHistory.objects.get_for_object(agent).filter(actor=people.admin)
    changes = [entry.changes_dict for entry in history.order_by("pk")]
    assert changes[0]["system_prompt"] == [OLD_PROMPT, NEW_PROMPT]
    assert changes[1]["tools"] == {
        "type": "m2m",
        "operation": "add",
        "objects": ["get_ticket_status"],
    }
    assert len(changes) == 2
    log = AdminLog.objects.get(object_id=str(agent.pk))
    assert (log.user, log.get_change_message()) == (
        people.admin,
        "Changed System prompt and Tools.",
    )
    page = client.get(saved["Location"]).content.decode()
    assert "Saved (system prompt, tools). The next test message uses it." in page
    assert f'data-conversation="{conversation}"' in page
    assert f'id="run-{run.pk}"' in page
    assert "Before." in page
    # The test is the builder's: listed there, not in the admin's chat.
    assert Conversation.objects.get(pk=conversation).builder_test
    assert f'?conversation={conversation}" aria-current="page">Is the VPN down?</a>' in page
    assert "Is the VPN down?" not in client.get("/chat/").content.decode()

    second = send(client, agent, "And now?", conversation=conversation)

    assert second.status_code == 201
    assert second.json()["conversation"] == conversation
    run_execute(run_id=second.json()["run"], holder="test")
    sent = server.requests["primary"][-1]
    assert sent["messages"][0] == {"role": "system", "content": NEW_PROMPT}
    assert {t["function"]["name"] for t in sent["tools"]} == {"create_ticket"}  # still disabled
    assert Run.objects.get(pk=second.json()["run"]).answer == "After."


def test_a_bad_edit_says_why_keeps_what_was_typed_and_saves_nothing(client, people, agent):
    client.force_login(people.admin)

    response = client.post(
        builder(agent), edit(agent, system_prompt=NEW_PROMPT, confidence_threshold="1.5")
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "nothing was saved" in page
    assert "Ensure this value is less than or equal to 1." in page
    assert f"{NEW_PROMPT}</textarea>" in page
    assert Agent.objects.get(pk=agent.pk).system_prompt == OLD_PROMPT
    assert not AdminLog.objects.exists()


def test_an_admin_who_may_not_use_the_agent_is_told_and_no_run_starts(client, agent):
    editor = staff("view_agent", "change_agent")  # may configure it, holds no grant to use it
    client.force_login(editor)

    page = client.get(builder(agent))
    sent = send(client, agent, "Hello")
    plain = client.post(
        reverse("admin:agents_agent_builder_send", args=[agent.pk]), {"text": "Hi"}, follow=True
    )

    assert page.status_code == 200
    assert escape(NO_GRANT) in page.content.decode()
    assert 'id="composer"' not in page.content.decode()
    assert sent.status_code == 403
    assert sent.json()["detail"] == NO_GRANT
    assert sent.json()["text"] == "Hello"
    assert escape(NO_GRANT) in plain.content.decode()
    assert not Run.objects.exists()
    assert not Conversation.objects.exists()


def test_a_refused_message_comes_back_with_its_text(client, people, agent):
    client.force_login(people.admin)

    empty = send(client, agent, "   ")
    elsewhere = Conversation.objects.create(owner=people.member, agent=agent)
    theirs = send(client, agent, "Hi", conversation=elsewhere.pk)

    assert (empty.status_code, empty.json()["detail"]) == (400, "the message is empty")
    assert (theirs.status_code, theirs.json()["detail"]) == (404, "no such conversation")
    assert not Run.objects.exists()
    # Someone else's conversation is never shown in the builder either.
    page = client.get(f"{builder(agent)}?conversation={elsewhere.pk}").content.decode()
    assert "data-conversation" not in page
    too_long = "x" * 20_001
    plain = client.post(
        reverse("admin:agents_agent_builder_send", args=[agent.pk]),
        {"text": too_long},
        follow=True,
    )
    assert plain.redirect_chain == [(builder(agent), 302)]
    assert "The message is longer than 20000 characters" in plain.content.decode()
    assert f"{too_long}</textarea>" in plain.content.decode()  # nothing typed is lost
