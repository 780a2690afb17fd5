"""The home page: the agents one may use with a way to start a chat, one's latest
conversations (the latest activity first), a search box, and the roles, budgets and admin link
it showed before."""

import uuid

import pytest

from agents.models import Agent, Conversation
from audit.services import SYSTEM
from governance.models import Action
from governance.services import access_grant
from portal.tests.test_conversation_order import listed, send

pytestmark = pytest.mark.django_db


def test_the_home_page_offers_the_agents_one_may_use(client, people, help_desk):
    help_desk.description = "Opens tickets & answers IT questions"
    help_desk.save(update_fields=["description"])
    Agent.objects.create(name="Disabled one", slug="off", route=help_desk.route, enabled=False)
    client.force_login(people.member)

    page = client.get("/").content.decode()

    assert "<h3>Help desk</h3>" in page
    assert "Opens tickets &amp; answers IT questions" in page
    assert (
        f'<a class="button" href="/chat/new/{help_desk.slug}/" '
        'aria-label="Start a chat with Help desk">Start a chat</a>'
    ) in page
    assert "Disabled one" not in page
    assert "No agent is open to you yet" not in page
    assert "Your roles: Member, Sales" in page  # what it showed before stays
    assert "administration console" not in page  # not staff


def test_a_user_without_an_agent_is_told_whom_to_ask(client, people, help_desk):
    client.force_login(people.outsider)

    page = client.get("/").content.decode()

    assert help_desk.name not in page
    assert f"/chat/new/{help_desk.slug}/" not in page
    assert (
        "No agent is open to you yet. Ask a governance admin (the “Governance admin” group) "
        "to give you or your team the use of one"
    ) in page
    assert "No conversation yet." in page


def test_the_staff_keep_their_link_to_the_console(client, people):
    client.force_login(people.admin)
    assert 'href="/admin/">Open the administration console</a>' in client.get("/").content.decode()


def test_the_home_page_takes_a_fixed_number_of_queries(
    client, people, help_desk, django_assert_max_num_queries
):
    for n in range(3):
        agent = Agent.objects.create(
            name=f"Agent {n}",
            slug=f"x{n}-{uuid.uuid4().hex[:4]}",
            route=help_desk.route,
            description="d",
        )
        access_grant(obj=agent, holder=people.member, action=Action.USE, actor=SYSTEM)
        for _ in range(4):
            Conversation.objects.create(owner=people.member, agent=agent, title=f"t{n}")
    client.force_login(people.member)
    client.get("/")  # the session and caches warmed

    with django_assert_max_num_queries(12):
        page = client.get("/").content.decode()

    assert page.count('class="card agent-card"') == 4
    assert page.count('<a href="/chat/c/') == 6  # the latest six


def test_the_latest_conversations_come_first(client, people, help_desk):
    client.force_login(people.member)
    older = send(client, help_desk, "first question").conversation
    newer = send(client, help_desk, "second question").conversation
    assert listed(client, "/", [older.pk, newer.pk]) == [newer.pk, older.pk]

    send(client, help_desk, "a follow-up", conversation=older)

    assert listed(client, "/", [older.pk, newer.pk]) == [older.pk, newer.pk]
    page = client.get("/").content.decode()
    assert '<a href="/chat/">All your conversations</a>' in page
