"""Releases in the console (agents/releases_admin.py): starting one from the add page the
versions page links to, the release page with its versions' metrics side by side, and its
buttons, for whoever may change the agent and nobody else."""

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from guardian.shortcuts import assign_perm

from agents.models import Agent, AgentVersion, Deployment, ModelRoute, Release, ReleaseState
from agents.releases import release_start
from agents.versions import version_record
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def _staff(name: str):
    return get_user_model().objects.create_user(f"{name}-{uuid.uuid4().hex[:6]}", is_staff=True)


@pytest.fixture
def agent():
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(name="Help desk", slug=f"h-{uuid.uuid4().hex[:6]}", route=route)
    version_record(agent=agent, actor=None, reason="first")
    agent.system_prompt = "Be brief."
    agent.save(update_fields=["system_prompt"])
    version_record(agent=agent, actor=None, reason="shorter answers", release=False)
    return agent


@pytest.fixture
def owner(agent):
    """May change this agent (a grant on it), nothing else."""
    user = _staff("olga")
    assign_perm("agents.change_agent", user, agent)
    return user


@pytest.fixture
def outsider():
    """Staff, who may change no agent."""
    return _staff("otto")


def versions(agent) -> tuple[AgentVersion, AgentVersion]:
    v1, v2 = AgentVersion.objects.filter(agent=agent).order_by("number")[:2]
    return v1, v2


def add_url(agent, candidate) -> str:
    return f"{reverse('admin:agents_release_add')}?agent={agent.pk}&candidate={candidate.pk}"


def form(agent, candidate, **changes) -> dict:
    return {
        "agent": agent.pk,
        "candidate": candidate.pk,
        "kind": "canary",
        "share": 10,
        "max_error_rate": "5",
        "max_escalation_rate": "",
        "max_held_rate": "",
        "max_thumbs_down_rate": "",
        "max_p95_latency_ms": "",
        "max_cost_per_run": "",
        "min_runs": 20,
        "min_duration": "01:00:00",
    } | changes


def test_the_add_page_is_prefilled_from_the_versions_page_link(client, agent, owner):
    _, v2 = versions(agent)
    client.force_login(owner)

    page = client.get(add_url(agent, v2))

    assert page.status_code == 200
    fields = page.context["adminform"].form
    assert fields["agent"].value() == str(agent.pk)
    assert fields["candidate"].value() == str(v2.pk)
    # Only this agent's versions are offered.
    assert list(fields.fields["candidate"].queryset) == list(agent.versions.order_by("-number"))


def test_starting_a_release_from_the_console_goes_through_the_service(client, agent, owner):
    v1, v2 = versions(agent)
    client.force_login(owner)

    response = client.post(add_url(agent, v2), form(agent, v2))

    release = Release.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:agents_release_change", args=[release.pk])
    assert (release.candidate, release.baseline, release.share) == (v2, v1, 10)
    assert release.max_error_rate == 5
    assert release.started_by == owner
    event = AuditEvent.objects.get(action="release.started")
    assert json.loads(event.data)["guards"] == {"max_error_rate": "5"}


def test_the_live_version_cannot_be_a_candidate(client, agent, owner):
    v1, _ = versions(agent)
    client.force_login(owner)

    response = client.post(add_url(agent, v1), form(agent, v1))

    assert response.status_code == 200
    assert "v1 is already live: it serves every run" in response.content.decode()
    assert not Release.objects.exists()
    assert not AuditEvent.objects.filter(action="release.started").exists()


def test_the_release_page_shows_both_versions_metrics_and_the_buttons(client, agent, owner):
    _, v2 = versions(agent)
    release = release_start(agent=agent, candidate=v2, actor=owner, share=25, max_error_rate=5)
    client.force_login(owner)

    page = client.get(reverse("admin:agents_release_change", args=[release.pk]))

    text = page.content.decode()
    assert page.status_code == 200
    assert "Candidate v2" in text
    assert "Baseline v1" in text
    assert ("Error rate", "none yet", "none yet", "5.00%", False) in page.context["rows"]
    assert page.context["unmet"][0] == "0 of 20 runs settled"
    for action in ("promote", "stop", "rollback"):
        assert f'value="{action}"' in text


def test_the_buttons_end_the_release(client, agent, owner):
    v2 = versions(agent)[1]
    release = release_start(agent=agent, candidate=v2, actor=owner, share=25)
    client.force_login(owner)
    end = reverse("admin:agents_release_end", args=[release.pk])

    promoted = client.post(end, {"action": "promote", "reason": "looks good"})
    again = client.post(end, {"action": "stop"})

    release.refresh_from_db()
    assert promoted.status_code == again.status_code == 302
    assert (release.state, release.ended_by, release.ended_reason) == (
        ReleaseState.PROMOTED,
        owner,
        "looks good",
    )
    assert Agent.objects.get(pk=agent.pk).live_version == v2
    assert not AuditEvent.objects.filter(action="release.stopped").exists()  # ended already


def test_whoever_may_not_change_the_agent_is_refused_and_nothing_is_written(agent, owner, outsider):
    _, v2 = versions(agent)
    release = release_start(agent=agent, candidate=v2, actor=owner, share=25)
    client = Client()
    client.force_login(outsider)
    end = reverse("admin:agents_release_end", args=[release.pk])
    events = AuditEvent.objects.count()

    page = client.get(reverse("admin:agents_release_change", args=[release.pk]))
    ended = client.post(end, {"action": "rollback"})
    added = client.post(add_url(agent, v2), form(agent, v2))
    listed = client.get(reverse("admin:agents_release_changelist"))

    # Someone else's release is as a missing one; no add page, no list.
    assert (page.status_code, page["Location"]) == (302, "/admin/")
    assert (ended.status_code, ended["Location"]) == (302, "/admin/")
    assert (added.status_code, listed.status_code) == (403, 403)
    release.refresh_from_db()
    assert release.state == ReleaseState.RUNNING
    assert Release.objects.count() == 1
    assert AuditEvent.objects.count() == events
    assert Agent.objects.get(pk=agent.pk).live_version == versions(agent)[0]


def test_the_buttons_need_a_post_with_the_csrf_token(agent, owner):
    _, v2 = versions(agent)
    release = release_start(agent=agent, candidate=v2, actor=owner, share=25)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    end = reverse("admin:agents_release_end", args=[release.pk])

    got = client.get(end)
    forged = client.post(end, {"action": "stop"})

    assert (got.status_code, forged.status_code) == (405, 403)
    release.refresh_from_db()
    assert release.state == ReleaseState.RUNNING


def test_the_list_shows_the_releases_of_the_agents_one_may_change(client, agent, owner):
    _, v2 = versions(agent)
    mine = release_start(agent=agent, candidate=v2, actor=owner, share=25)
    other = Agent.objects.create(name="Other", slug=f"o-{uuid.uuid4().hex[:6]}", route=agent.route)
    version_record(agent=other, actor=None)
    other.system_prompt = "Hm."
    other.save(update_fields=["system_prompt"])
    theirs_candidate = version_record(agent=other, actor=None, release=False)
    theirs = release_start(agent=other, candidate=theirs_candidate, actor=None, share=5)
    client.force_login(owner)

    listed = client.get(reverse("admin:agents_release_changelist"))

    assert listed.status_code == 200
    assert [r.pk for r in listed.context["cl"].result_list] == [mine.pk]
    assert theirs.pk != mine.pk


def test_a_change_served_at_once_stops_the_running_release(client, agent):
    """Its baseline no longer serves: the release would compare its candidate with nothing."""
    from agents.tests.test_versions_admin import form_data

    _, v2 = versions(agent)
    admin = get_user_model().objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}")
    release = release_start(agent=agent, candidate=v2, actor=admin, share=25)
    client.force_login(admin)

    response = client.post(
        reverse("admin:agents_agent_change", args=[agent.pk]),
        form_data(Agent.objects.get(pk=agent.pk), max_steps=3, version_reason="Fewer steps"),
    )

    assert response.status_code == 302
    release.refresh_from_db()
    agent.refresh_from_db()
    assert agent.live_version.number == 3
    assert release.state == ReleaseState.STOPPED
    assert release.ended_reason == "superseded: v3 was made live"
    stopped = AuditEvent.objects.get(action="release.stopped")
    data = json.loads(stopped.data)
    assert (stopped.actor_id, data["reason"]) == (str(admin.pk), release.ended_reason)


def test_a_draft_saved_during_a_release_leaves_it_running(client, agent):
    from agents.tests.test_versions_admin import form_data

    _, v2 = versions(agent)
    admin = get_user_model().objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}")
    release = release_start(agent=agent, candidate=v2, actor=admin, share=25)
    client.force_login(admin)

    response = client.post(
        reverse("admin:agents_agent_change", args=[agent.pk]),
        form_data(Agent.objects.get(pk=agent.pk), max_steps=3, version_release="draft"),
    )

    assert response.status_code == 302
    assert AgentVersion.objects.filter(agent=agent).order_by("-number").first().number == 3
    agent.refresh_from_db()
    assert agent.live_version.number != 3  # a draft: the live version is not the new one
    release.refresh_from_db()
    assert release.state == ReleaseState.RUNNING
    assert not AuditEvent.objects.filter(action="release.stopped").exists()


@pytest.mark.parametrize("given", ["²", "9" * 30, "x"])
def test_an_odd_agent_in_the_add_page_s_address_filters_nothing(client, agent, owner, given):
    client.force_login(owner)

    page = client.get(f"{reverse('admin:agents_release_add')}?agent={given}")

    assert page.status_code == 200
    assert not Release.objects.exists()
