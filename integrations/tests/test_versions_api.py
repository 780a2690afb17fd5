"""The version that served a run, on the run's trace page and in the API's run; an agent's
versions through the API (GET /api/v1/agents/{slug}/versions) for callers who may use it."""

import pytest
from django.urls import reverse
from guardian.shortcuts import assign_perm

from agents.models import Agent, Conversation
from agents.services import run_start
from agents.versions import version_record
from tools.models import Tool

pytestmark = pytest.mark.django_db
SECRET_PROMPT = "You are the help desk. Internal: escalate VIPs first."


@pytest.fixture
def agent(help_desk, people):
    Agent.objects.filter(pk=help_desk.pk).update(system_prompt="You are the help desk.")
    agent = Agent.objects.get(pk=help_desk.pk)
    version_record(agent=agent, actor=people.admin, reason="Launch")
    Agent.objects.filter(pk=agent.pk).update(system_prompt=SECRET_PROMPT)
    agent.tools.add(Tool.objects.get(name="get_ticket_status"))
    version_record(agent=agent, actor=people.admin, reason="Status lookups")
    return Agent.objects.get(pk=agent.pk)


@pytest.fixture
def run(agent, people, django_capture_on_commit_callbacks):
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    with django_capture_on_commit_callbacks():
        return run_start(agent=agent, conversation=conversation, actor=people.member, input="hi")


def test_the_api_s_run_says_which_version_served_it(client, people, run, bearer):
    body = client.get(f"/api/v1/runs/{run.pk}", **bearer(people.member, "runs:read")).json()

    assert body["version"] == 2


def test_an_agent_s_versions_newest_first_with_changes_the_prompt_withheld(
    client, people, agent, bearer
):
    headers = bearer(people.member, "agents:run")

    body = client.get(f"/api/v1/agents/{agent.slug}/versions", **headers).json()

    [two, one] = body["results"]
    assert (two["number"], two["live"], two["reason"], two["rollback_of"]) == (
        2,
        True,
        "Status lookups",
        None,
    )
    assert (one["number"], one["live"]) == (1, False)
    assert two["changes"] == [
        {"field": "system_prompt", "label": "System prompt", "before": None, "after": None},
        {
            "field": "tools",
            "label": "Tools",
            "before": ["create_ticket"],
            "after": ["create_ticket", "get_ticket_status"],
        },
    ]
    assert SECRET_PROMPT not in str(body)


def test_whoever_may_change_the_agent_sees_the_prompt_s_changes(client, people, agent, bearer):
    assign_perm("agents.change_agent", people.member, agent)

    body = client.get(
        f"/api/v1/agents/{agent.slug}/versions", **bearer(people.member, "agents:run")
    ).json()

    assert body["results"][0]["changes"][0]["after"] == SECRET_PROMPT


def test_a_missing_agent_and_one_the_caller_may_not_use_are_the_same_404(
    client, people, agent, bearer
):
    outsider = bearer(people.outsider, "agents:run")

    forbidden = client.get(f"/api/v1/agents/{agent.slug}/versions", **outsider)
    missing = client.get("/api/v1/agents/no-such-agent/versions", **outsider)

    assert forbidden.status_code == missing.status_code == 404
    assert {**forbidden.json(), "instance": ""} == {**missing.json(), "instance": ""}
    assert forbidden.json()["detail"] == "no such agent"
    assert forbidden["Content-Type"] == "application/problem+json"


def test_the_schema_describes_the_versions(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    operation = schema["paths"]["/api/v1/agents/{slug}/versions"]["get"]
    assert operation["tags"] == ["agents"]
    version = schema["components"]["schemas"]["Version"]["properties"]
    assert set(version) == {"number", "created_at", "reason", "live", "rollback_of", "changes"}
    run = schema["components"]["schemas"]["Run"]["properties"]["version"]
    assert (run["type"], run["nullable"]) == ("integer", True)


def test_the_trace_page_shows_the_version_linked_for_staff_only(client, people, run):
    client.force_login(people.member)
    own = client.get(reverse("run-trace", args=[run.pk])).content.decode()
    client.force_login(people.admin)
    staff = client.get(reverse("run-trace", args=[run.pk])).content.decode()

    link = reverse("admin:agents_agent_version", args=[run.agent_id, run.version_id])
    assert "<dd data-version>v2 " in own
    assert link not in own
    assert f'<dd data-version><a href="{link}">v2</a>' in staff
