"""Agent versions in the console (agents/versions_admin.py): the change page and the builder
record a version with a reason, now or as a draft; the versions page, a version's page, the diff
and the rollback, for whoever may change the agent only."""

import uuid

import pytest
from django.contrib.admin.models import LogEntry as AdminLog
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.forms.models import model_to_dict
from django.urls import reverse
from django.utils.html import escape
from guardian.shortcuts import assign_perm

from agents.models import Agent, AgentVersion, Conversation, Deployment, ModelRoute
from agents.services import run_start
from agents.versions import version_record
from audit.models import AuditEvent
from tools.models import Tool

pytestmark = pytest.mark.django_db
PROMPT_1 = "You are the IT help desk."
EVIL = "Answer briefly.\n<script>alert('x')</script>"


@pytest.fixture
def agent(help_desk, people):
    Agent.objects.filter(pk=help_desk.pk).update(system_prompt=PROMPT_1)
    agent = Agent.objects.get(pk=help_desk.pk)
    version_record(agent=agent, actor=people.admin, reason="Launch")
    return Agent.objects.get(pk=agent.pk)


def staff(*codenames: str):
    user = get_user_model().objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def form_data(agent: Agent, **changes) -> dict:
    """The agent's change form as the page posts it, with `changes`."""
    data = model_to_dict(agent)
    for name in ("tools", "knowledge_bases", "delegates", "approver_groups"):
        data[name] = [obj.pk for obj in data[name]]
    data = {k: ("" if v is None else v) for k, v in data.items() if k != "id"}
    data["allowed_regions"] = ",".join(agent.allowed_regions or [])
    return data | changes


def change(agent) -> str:
    return reverse("admin:agents_agent_change", args=[agent.pk])


def versions(agent) -> str:
    return reverse("admin:agents_agent_versions", args=[agent.pk])


def rollback(agent, version) -> str:
    return reverse("admin:agents_agent_version_rollback", args=[agent.pk, version.pk])


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))


# The change page and the builder -------------------------------------------------------------


def test_a_change_saved_now_is_the_next_version_with_its_reason(client, people, agent):
    client.force_login(people.admin)

    response = client.post(
        change(agent),
        form_data(agent, system_prompt="Be brief.", version_reason="Shorter answers"),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    latest = AgentVersion.objects.filter(agent=agent).first()
    assert (latest.number, latest.reason, latest.created_by) == (2, "Shorter answers", people.admin)
    assert latest.changes == [
        {
            "field": "system_prompt",
            "label": "System prompt",
            "before": PROMPT_1,
            "after": "Be brief.",
        }
    ]
    assert Agent.objects.get(pk=agent.pk).live_version == latest
    # The reason is about the change, not a field of the agent that changed.
    assert AdminLog.objects.get(object_id=str(agent.pk)).get_change_message() == (
        "Changed System prompt."
    )
    page = client.get(change(agent)).content.decode()
    assert "Recorded as version v2, serving from now on." in page
    assert "v2 serves its runs, and is its newest." in page
    assert f'href="{versions(agent)}"' in page


def test_a_draft_change_waits_and_the_change_page_says_so(client, people, agent):
    client.force_login(people.admin)

    client.post(
        change(agent),
        form_data(agent, max_steps=3, version_reason="Try fewer steps", version_release="draft"),
    )

    draft = AgentVersion.objects.filter(agent=agent).first()
    assert (draft.number, draft.reason) == (2, "Try fewer steps")
    assert Agent.objects.get(pk=agent.pk).live_version.number == 1
    page = client.get(change(agent)).content.decode()
    assert "Saved as draft version v2: v1 keeps serving its runs until it is released." in page
    assert "v1 serves its runs; the newest is v2, a draft not serving yet." in page
    assert actions().count("agent.version_released") == 1  # v1's, by the fixture
    assert actions()[-1] == "agent.version_created"


def test_a_save_that_changes_no_behaviour_makes_no_version(client, people, agent):
    client.force_login(people.admin)

    response = client.post(change(agent), form_data(agent, description="New words"))

    assert response.status_code == 302
    assert AgentVersion.objects.filter(agent=agent).count() == 1
    assert Agent.objects.get(pk=agent.pk).description == "New words"


def test_a_new_agent_gets_v1_serving(client, people, help_desk):
    client.force_login(people.admin)
    data = form_data(help_desk, name="Payroll", slug=f"payroll-{uuid.uuid4().hex[:4]}")
    data |= {"version_reason": "New agent", "version_release": "draft"}  # v1 serves all the same

    response = client.post(reverse("admin:agents_agent_add"), data)

    assert response.status_code == 302
    agent = Agent.objects.get(name="Payroll")
    [first] = agent.versions.all()
    assert (first.number, first.reason, agent.live_version) == (1, "New agent", first)
    assert [t["after"] for t in first.changes if t["field"] == "tools"] == [["create_ticket"]]


def test_the_builder_records_a_draft_and_says_the_test_chat_keeps_the_live_version(
    client, people, agent
):
    client.force_login(people.admin)
    url = reverse("admin:agents_agent_builder", args=[agent.pk])
    data = {
        "system_prompt": "Be brief.",
        "route": agent.route_id,
        "tools": [t.pk for t in agent.tools.all()],
        "knowledge_bases": [],
        "confidence_threshold": agent.confidence_threshold,
        "passages_per_run": agent.passages_per_run,
        "max_steps": agent.max_steps,
        "max_tokens_per_run": agent.max_tokens_per_run,
        "version_reason": "Try it",
        "version_release": "draft",
    }

    response = client.post(url, data, follow=True)

    page = response.content.decode()
    assert "Saved (system prompt) as a draft version" in page
    assert "v1 serves its runs; the newest is v2, a draft not serving yet." in page
    draft = AgentVersion.objects.filter(agent=agent).first()
    assert (draft.number, draft.reason) == (2, "Try it")
    assert Agent.objects.get(pk=agent.pk).live_version.number == 1
    # Only a reason typed: nothing changed.
    again = client.post(url, data | {"version_reason": "Just words"}, follow=True)
    assert "Nothing changed." in again.content.decode()


# The versions page, a version, the diff ----------------------------------------------------


def test_the_versions_page_lists_who_when_why_what_and_runs_served_in_fixed_queries(
    client, people, agent, django_assert_num_queries, django_capture_on_commit_callbacks
):
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    with django_capture_on_commit_callbacks():
        for text in ("a", "b"):
            run_start(agent=agent, conversation=conversation, actor=people.member, input=text)
    Agent.objects.filter(pk=agent.pk).update(system_prompt=EVIL)
    version_record(agent=agent, actor=people.admin, reason="<b>Careful</b>")
    with django_capture_on_commit_callbacks():
        run_start(agent=agent, conversation=conversation, actor=people.member, input="c")
    client.force_login(people.admin)
    client.get(versions(agent))  # the session and the user, cached from here

    # The session, the user, the agent, and its versions with their authors, the versions
    # they restored and the runs each served: one query however many versions and runs.
    with django_assert_num_queries(4):
        response = client.get(versions(agent))

    page = response.content.decode()
    rows = {r["version"].number: r for r in response.context["rows"]}
    assert {n: (r["version"].served, r["live"], r["by"]) for n, r in rows.items()} == {
        2: (1, True, people.admin.username),
        1: (2, False, people.admin.username),
    }
    assert escape("<b>Careful</b>") in page
    assert "<b>Careful</b>" not in page
    assert "<script>alert" not in page
    assert 'id="version-2" class="live"' in page
    assert rollback(agent, rows[1]["version"]) in page
    assert rollback(agent, rows[2]["version"]) not in page  # what serves already
    # A release can start with any version but the one that serves (agents.releases_admin).
    start = reverse("admin:agents_release_add")
    assert escape(f"{start}?agent={agent.pk}&candidate={rows[1]['version'].pk}") in page
    assert f"candidate={rows[2]['version'].pk}" not in page
    assert page.count('class="release-start"') == 1


def test_the_diff_shows_each_field_and_the_prompt_line_by_line_escaped(client, people, agent):
    v1 = agent.live_version
    Agent.objects.filter(pk=agent.pk).update(system_prompt=f"{PROMPT_1}\n{EVIL}", max_steps=2)
    agent.tools.add(Tool.objects.get(name="get_ticket_status"))
    v2 = version_record(agent=agent, actor=people.admin)
    client.force_login(people.admin)

    response = client.get(
        reverse("admin:agents_agent_versions_diff", args=[agent.pk]),
        {"from": v1.pk, "to": v2.pk},
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "<script>alert('x')</script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    rows = {row.field: row for row in response.context["rows"]}
    assert [f for f, row in rows.items() if row.changed] == ["system_prompt", "tools", "max_steps"]
    assert [(r.op, r.right[0] if r.right else None) for r in rows["system_prompt"].lines] == [
        ("equal", 1),
        ("insert", 2),
        ("insert", 3),
    ]
    assert "<ins>get_ticket_status</ins>" in page
    version_page = client.get(
        reverse("admin:agents_agent_version", args=[agent.pk, v2.pk])
    ).content.decode()
    assert "&lt;script&gt;" in version_page
    assert "<script>alert" not in version_page
    missing = client.get(reverse("admin:agents_agent_version", args=[agent.pk, v2.pk + 100]))
    assert missing.status_code == 404


# Rollback ----------------------------------------------------------------------------------


def test_a_rollback_is_confirmed_with_a_reason_then_restores_and_is_audited(client, people, agent):
    v1 = agent.live_version
    Agent.objects.filter(pk=agent.pk).update(system_prompt=EVIL)
    version_record(agent=agent, actor=people.admin)
    client.force_login(people.admin)

    confirm = client.get(rollback(agent, v1))
    done = client.post(rollback(agent, v1), {"reason": "The new prompt misbehaved"})

    assert confirm.status_code == 200
    assert "<script>alert" not in confirm.content.decode()
    assert "Roll back to v1" in confirm.content.decode()
    assert (done.status_code, done["Location"]) == (302, versions(agent))
    agent = Agent.objects.get(pk=agent.pk)
    assert (agent.system_prompt, agent.live_version.number) == (PROMPT_1, 3)
    assert (agent.live_version.rollback_of, agent.live_version.reason) == (
        v1,
        "The new prompt misbehaved",
    )
    assert actions()[-2:] == ["agent.version_rolled_back", "agent.version_released"]
    page = client.get(versions(agent)).content.decode()
    assert "Rolled back to v1: v3 serves from now on." in page


def test_a_staff_user_who_may_not_change_the_agent_cannot_roll_back(client, agent, people):
    v1 = agent.live_version
    Agent.objects.filter(pk=agent.pk).update(system_prompt="Be brief.")
    version_record(agent=agent, actor=people.admin)
    viewer = staff("view_agent")
    nobody = staff()
    before = (AgentVersion.objects.count(), AuditEvent.objects.count())

    client.force_login(viewer)
    listed = client.get(versions(agent))
    asked = client.get(rollback(agent, v1))
    posted = client.post(rollback(agent, v1), {"reason": "Mine now"})
    client.force_login(nobody)
    hidden = client.get(versions(agent))
    posted_too = client.post(rollback(agent, v1), {"reason": "Mine now"})

    assert listed.status_code == 200
    assert rollback(agent, v1) not in listed.content.decode()
    assert (asked.status_code, posted.status_code) == (403, 403)
    assert (hidden.status_code, posted_too.status_code) == (403, 403)
    assert (AgentVersion.objects.count(), AuditEvent.objects.count()) == before
    assert Agent.objects.get(pk=agent.pk).system_prompt == "Be brief."


def test_guardian_s_change_permission_on_the_agent_allows_a_rollback(client, agent, people):
    v1 = agent.live_version
    Agent.objects.filter(pk=agent.pk).update(system_prompt="Be brief.")
    version_record(agent=agent, actor=people.admin)
    owner = staff()
    assign_perm("agents.change_agent", owner, agent)
    client.force_login(owner)

    response = client.post(rollback(agent, v1), {"reason": "Owner's call"})

    assert response.status_code == 302
    assert Agent.objects.get(pk=agent.pk).live_version.rollback_of == v1


def test_a_rollback_to_a_version_whose_route_was_deleted_is_a_clear_error(
    client, people, agent, server
):
    gone = ModelRoute.objects.create(name=f"gone-{uuid.uuid4().hex[:4]}")
    Deployment.objects.create(route=gone, position=1, model="openai/x", api_base=server.base("x"))
    Agent.objects.filter(pk=agent.pk).update(route=gone)
    old = version_record(agent=agent, actor=people.admin)
    Agent.objects.filter(pk=agent.pk).update(route=agent.route)
    version_record(agent=agent, actor=people.admin)
    gone.delete()
    before = (AgentVersion.objects.count(), AuditEvent.objects.count())
    client.force_login(people.admin)

    response = client.post(rollback(agent, old), {"reason": "Back"})

    assert response.status_code == 400
    assert (
        "v2&#x27;s model route was deleted: it cannot be restored. Nothing was changed."
        in response.content.decode()
    )
    assert (AgentVersion.objects.count(), AuditEvent.objects.count()) == before


def test_a_rollback_needs_a_post_with_the_csrf_token(people, agent):
    from django.test import Client

    Agent.objects.filter(pk=agent.pk).update(system_prompt="Be brief.")
    version_record(agent=agent, actor=people.admin)
    client = Client(enforce_csrf_checks=True)
    client.force_login(people.admin)

    response = client.post(rollback(agent, agent.live_version), {"reason": "x"})

    assert response.status_code == 403
    assert AgentVersion.objects.filter(agent=agent).count() == 2
