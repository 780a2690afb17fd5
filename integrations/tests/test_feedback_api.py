"""Feedback through the API: the asker rates a run's answer (POST or PUT, 201 then 200), only
their own run (404 otherwise) and only once it answered (409); bad values are 400 problems and
write nothing; the agent's owners list what people said, by agent and rating, at a constant
number of queries."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from guardian.shortcuts import assign_perm

from agents.feedback import feedback_record
from agents.models import Agent, Conversation, Feedback, Run
from audit.models import AuditEvent
from integrations.tests.test_resources import problem

pytestmark = pytest.mark.django_db


def answered(user, agent, state="succeeded") -> Run:
    conversation = Conversation.objects.create(owner=user, agent=agent, title="VPN")
    return Run.objects.create(
        agent=agent, conversation=conversation, actor=user, input="VPN?", state=state
    )


def send(client, run, body, auth, method="post"):
    return getattr(client, method)(
        f"/api/v1/runs/{run.pk}/feedback",
        json.dumps(body),
        content_type="application/json",
        **auth,
    )


def test_the_asker_rates_then_changes_the_rating(client, people, governed, bearer):
    run = answered(people.integration, governed.agent)
    auth = bearer(people.integration, "agents:run runs:read")

    made = send(client, run, {"rating": "down", "comment": "Wrong office"}, auth)
    changed = send(client, run, {"rating": "up"}, auth, method="put")
    read = client.get(f"/api/v1/runs/{run.pk}/feedback", **auth)

    assert made.status_code == 201, made.content
    feedback = Feedback.objects.get()
    assert made.json() | {"created_at": None, "updated_at": None} == {
        "id": feedback.pk,
        "run": run.pk,
        "agent": governed.agent.slug,
        "author": people.integration.username,
        "rating": "down",
        "comment": "Wrong office",
        "created_at": None,
        "updated_at": None,
    }
    assert changed.status_code == 200
    assert (changed.json()["rating"], changed.json()["comment"]) == ("up", "Wrong office")
    assert read.json()["rating"] == "up"
    assert Feedback.objects.count() == 1
    assert AuditEvent.objects.filter(action="run.feedback", run=str(run.pk)).count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "rating"),
        ({"rating": "sideways"}, "rating"),
        ({"rating": 1}, "rating"),
        ({"rating": "up", "comment": "x" * 2001}, "comment"),
        ({"rating": "up", "comment": ["a"]}, "comment"),
    ],
)
def test_a_bad_rating_is_a_400_problem_and_writes_nothing(
    client, people, governed, bearer, body, field
):
    run = answered(people.integration, governed.agent)
    auth = bearer(people.integration, "agents:run")

    response = send(client, run, body, auth)

    assert list(problem(response, 400, "invalid")["errors"]) == [field]
    assert not Feedback.objects.exists()
    assert not AuditEvent.objects.filter(action="run.feedback").exists()


def test_another_persons_run_is_a_404_and_an_unanswered_one_a_409(client, people, governed, bearer):
    theirs = answered(people.member, governed.agent)
    waiting = answered(people.integration, governed.agent, state="running")
    auth = bearer(people.integration, "agents:run runs:read")

    problem(send(client, theirs, {"rating": "up"}, auth), 404, "not-found")
    problem(send(client, theirs, {"rating": "nonsense"}, auth), 404, "not-found")
    problem(client.get(f"/api/v1/runs/{theirs.pk}/feedback", **auth), 404, "not-found")
    body = problem(send(client, waiting, {"rating": "up"}, auth), 409, "conflict")
    assert body["detail"] == "only an answer can be rated: this run has none"
    problem(client.get(f"/api/v1/runs/{waiting.pk}/feedback", **auth), 404, "not-found")
    assert not Feedback.objects.exists()
    assert not AuditEvent.objects.filter(action="run.feedback").exists()


def test_rating_needs_the_scope_and_credentials(client, people, governed, bearer):
    run = answered(people.integration, governed.agent)

    reader = bearer(people.integration, "runs:read")
    assert problem(send(client, run, {"rating": "up"}, reader), 403, "forbidden")["detail"] == (
        "the token lacks the scope 'agents:run'"
    )
    problem(send(client, run, {"rating": "up"}, {}), 401, "not-authenticated")
    problem(client.get("/api/v1/feedback"), 401, "not-authenticated")
    assert not Feedback.objects.exists()


def test_owners_list_feedback_by_agent_and_rating(client, people, governed, team, bearer):
    other = Agent.objects.create(name="Other", slug="other-owned", route=governed.route)
    on_ours = feedback_record(
        actor=people.member,
        run_id=answered(people.member, governed.agent).pk,
        rating="down",
        comment="Call me on +44 20 7946 0958",
    )
    on_other = feedback_record(
        actor=people.member, run_id=answered(people.member, other).pk, rating="up"
    )
    owner = people.reviewer
    assign_perm("agents.change_agent", owner, governed.agent)  # owns one agent
    auth = bearer(owner, "runs:read")

    listed = client.get("/api/v1/feedback", **auth).json()["results"]
    by_agent = client.get(f"/api/v1/feedback?agent={governed.agent.slug}", **auth)
    ups = client.get("/api/v1/feedback?rating=up", **bearer(people.admin, "runs:read"))

    assert [(f["id"], f["agent"], f["rating"]) for f in listed] == [
        (on_ours.pk, governed.agent.slug, "down")
    ]
    assert listed[0]["comment"].startswith("Call me on [PHONE:")  # another's words, hashed
    assert [f["id"] for f in by_agent.json()["results"]] == [on_ours.pk]
    assert [f["id"] for f in ups.json()["results"]] == [on_other.pk]
    problem(client.get(f"/api/v1/feedback?agent={other.slug}", **auth), 404, "not-found")
    problem(client.get("/api/v1/feedback?agent=nobody", **auth), 404, "not-found")
    bad = problem(client.get("/api/v1/feedback?rating=meh", **auth), 400, "invalid")
    assert list(bad["errors"]) == ["rating"]
    outsider = client.get("/api/v1/feedback", **bearer(people.outsider, "runs:read"))
    assert outsider.json()["results"] == []
    mine = client.get("/api/v1/feedback", **bearer(people.member, "runs:read")).json()
    assert {f["comment"] for f in mine["results"]} == {"Call me on +44 20 7946 0958", ""}


def test_the_feedback_list_costs_the_same_for_more_rows(client, people, governed):
    def add():
        run = answered(people.member, governed.agent)
        feedback_record(actor=people.member, run_id=run.pk, rating="down", comment="no")

    client.force_login(people.admin)
    add()
    with CaptureQueriesContext(connection) as one:
        assert client.get("/api/v1/feedback").status_code == 200
    for _ in range(4):
        add()
    with CaptureQueriesContext(connection) as five:
        body = client.get("/api/v1/feedback").json()
    assert len(body["results"]) == 5
    assert len(five) == len(one)


def test_the_schema_describes_the_feedback_endpoints(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    assert set(paths["/api/v1/runs/{id}/feedback"]) >= {"get", "post", "put"}
    assert "/api/v1/feedback" in paths
    assert schema["components"]["schemas"]["FeedbackRequest"]["required"] == ["rating"]
