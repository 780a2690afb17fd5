"""Feedback on answers and regenerate, in the chat over HTTP: the asker rates an answered run
(up or down, with a comment, changed in place, audited), nobody else may and no unanswered run
can be; the agent's owners read it on the run's trace and in the admin. Regenerate asks the
agent the conversation's latest message again through the front door. Stop ends a queued run."""

import json

import pytest
from django.contrib.auth.models import Permission
from guardian.shortcuts import assign_perm

from agents.feedback import feedback_agents, feedback_record
from agents.models import Conversation, Feedback, Run
from audit.models import AuditEvent
from governance.access import NoAccess

pytestmark = pytest.mark.django_db
JSON = {"HTTP_ACCEPT": "application/json"}


def answered(user, agent, *, state="succeeded", conversation=None, text="Is the VPN down?"):
    conversation = conversation or Conversation.objects.create(owner=user, agent=agent, title="V")
    return Run.objects.create(
        agent=agent,
        conversation=conversation,
        actor=user,
        input=text,
        state=state,
        answer="Restart the client." if state == "succeeded" else "",
    )


def rate(client, run, rating, comment=None, **headers):
    data = {"rating": rating, "conversation": run.conversation_id}
    if comment is not None:
        data["comment"] = comment
    return client.post(f"/chat/runs/{run.pk}/feedback/", data, **headers)


def feedback_events() -> list:
    return list(AuditEvent.objects.filter(action="run.feedback").values("actor_id", "run"))


def test_the_asker_rates_an_answer_down_with_a_comment_then_changes_it(client, people, governed):
    run = answered(people.member, governed.agent)
    client.force_login(people.member)
    page = client.get(f"/chat/c/{run.conversation_id}/").content.decode()
    assert f'action="/chat/runs/{run.pk}/feedback/"' in page
    assert 'aria-pressed="false"' in page

    down = rate(client, run, "down", "It is not down, my laptop is.", **JSON)

    assert down.status_code == 200
    assert down.json() == {
        "run": run.pk,
        "rating": "down",
        "comment": "It is not down, my laptop is.",
    }
    feedback = Feedback.objects.get()
    assert (feedback.run, feedback.author, feedback.rating) == (run, people.member, "down")
    part = client.get(f"/chat/runs/{run.pk}/").content.decode()
    assert 'value="down" class="thumb down" aria-pressed="true"' in part
    assert ">It is not down, my laptop is.</textarea>" in part
    # Changed in place; a form without the comment box keeps the comment.
    assert rate(client, run, "up", **JSON).status_code == 200
    feedback.refresh_from_db()
    assert (feedback.rating, feedback.comment) == ("up", "It is not down, my laptop is.")
    assert Feedback.objects.count() == 1
    events = AuditEvent.objects.filter(action="run.feedback").order_by("sequence")
    assert [e.run for e in events] == [str(run.pk), str(run.pk)]
    assert [e.actor_id for e in events] == [str(people.member.pk)] * 2
    assert "laptop" not in "".join(e.data for e in events)  # the rating, not the words
    assert json.loads(events.last().data) == {
        "agent": governed.agent.slug,
        "commented": True,
        "previous": "down",
        "rating": "up",
    }


def test_a_plain_form_rates_and_comes_back_to_the_conversation(client, people, governed):
    run = answered(people.member, governed.agent)
    client.force_login(people.member)

    response = rate(client, run, "up", follow=True)

    assert response.redirect_chain == [(f"/chat/c/{run.conversation_id}/#run-{run.pk}", 302)]
    assert "your feedback is recorded" in response.content.decode()
    assert Feedback.objects.get().rating == "up"


@pytest.mark.parametrize("who", ["outsider", "reviewer", "admin", "denied"])
def test_who_did_not_ask_cannot_rate_the_answer(client, people, governed, who):
    run = answered(people.member, governed.agent)
    client.force_login(people.named(who))

    assert rate(client, run, "down", "bad", **JSON).status_code == 404
    assert rate(client, run, "down").status_code == 404
    with pytest.raises(NoAccess):
        feedback_record(actor=people.named(who), run_id=run.pk, rating="up")
    assert not Feedback.objects.exists()
    assert feedback_events() == []


@pytest.mark.parametrize("state", ["queued", "running", "awaiting_review", "failed", "cancelled"])
def test_a_run_that_did_not_answer_cannot_be_rated(client, people, governed, state):
    run = answered(people.member, governed.agent, state=state)
    client.force_login(people.member)

    response = rate(client, run, "up", **JSON)

    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == "/api/problems/conflict"
    assert response.json()["detail"] == "only an answer can be rated: this run has none"
    assert (
        f"/chat/runs/{run.pk}/feedback/" not in client.get(f"/chat/runs/{run.pk}/").content.decode()
    )
    assert not Feedback.objects.exists()
    assert feedback_events() == []


@pytest.mark.parametrize(
    ("rating", "comment", "field", "message"),
    [
        ("", None, "rating", "the rating is “up” or “down”"),
        ("meh", "ok", "rating", "the rating is “up” or “down”"),
        ("down", "x" * 2001, "comment", "the comment is longer than 2000 characters"),
        ("down", "a\x00b", "comment", "the comment contains a NUL character, which cannot be kept"),
    ],
)
def test_a_bad_rating_or_comment_is_a_problem_and_records_nothing(
    client, people, governed, rating, comment, field, message
):
    run = answered(people.member, governed.agent)
    client.force_login(people.member)

    response = rate(client, run, rating, comment, **JSON)

    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "/api/problems/invalid"
    assert body["errors"] == {field: [message]}
    plain = rate(client, run, rating, comment, follow=True)
    assert message[0].upper() + message[1:] in plain.content.decode()
    assert not Feedback.objects.exists()
    assert feedback_events() == []


def test_the_owners_read_the_feedback_on_the_trace_the_asker_only_their_own(
    client, people, governed
):
    run = answered(people.member, governed.agent)
    feedback_record(
        actor=people.member, run_id=run.pk, rating="down", comment="Wrong: mail me at a@b.io"
    )

    client.force_login(people.admin)  # a governance admin: may change every agent
    trace = client.get(f"/runs/{run.pk}/").content.decode()
    assert "Feedback on the answer" in trace
    assert "Not helpful</strong> from " + people.member.username in trace
    assert "Wrong: mail me at [EMAIL:" in trace  # another's personal data, as the trail keeps it
    assert "a@b.io" not in trace

    client.force_login(people.member)
    mine = client.get(f"/runs/{run.pk}/").content.decode()
    assert "Wrong: mail me at a@b.io" in mine

    client.force_login(people.reviewer)  # sees no trace of a run it does not review
    assert client.get(f"/runs/{run.pk}/").status_code == 404


def test_an_agent_is_owned_by_who_may_change_it(people, governed, team):
    """The admin's rule: the model-wide change permission, or guardian's on the agent."""
    other = type(governed.agent).objects.create(
        name="Other", slug="other-agent", route=governed.route
    )
    assert set(feedback_agents(people.admin)) == {governed.agent, other}
    assert set(feedback_agents(people.member)) == set()
    assign_perm("agents.change_agent", team, governed.agent)  # the team owns one agent
    assert set(feedback_agents(people.member)) == {governed.agent}
    people.outsider.user_permissions.add(
        Permission.objects.get(codename="change_agent", content_type__app_label="agents")
    )
    people.outsider = type(people.outsider).objects.get(pk=people.outsider.pk)  # fresh perms
    assert set(feedback_agents(people.outsider)) == {governed.agent, other}
    people.member.is_active = False
    assert set(feedback_agents(people.member)) == set()


def test_the_admin_lists_feedback_read_only_to_the_agents_owners(client, people, governed):
    run = answered(people.member, governed.agent)
    feedback = feedback_record(actor=people.member, run_id=run.pk, rating="down", comment="Slow")
    client.force_login(people.admin)

    listed = client.get("/admin/agents/feedback/")
    one = client.get(f"/admin/agents/feedback/{feedback.pk}/change/")

    assert listed.status_code == 200
    assert "Slow" in listed.content.decode()
    assert f'href="/runs/{run.pk}/"' in listed.content.decode()
    assert one.status_code == 200
    assert 'name="rating"' not in one.content.decode()  # read-only
    assert client.post(f"/admin/agents/feedback/{feedback.pk}/delete/").status_code == 403
    people.reviewer.is_staff = True
    people.reviewer.save(update_fields=["is_staff"])
    client.force_login(people.reviewer)  # staff, owns no agent
    assert client.get("/admin/agents/feedback/").status_code == 403
    assert Feedback.objects.get().comment == "Slow"


# --- regenerate and stop ----------------------------------------------------------------------


def test_regenerate_asks_the_same_agent_the_same_message_in_the_same_conversation(
    client, people, help_desk
):
    first = answered(people.member, help_desk, text="Where is my badge?")
    client.force_login(people.member)
    page = client.get(f"/chat/c/{first.conversation_id}/").content.decode()
    assert f'action="/chat/runs/{first.pk}/regenerate/"' in page

    response = client.post(f"/chat/runs/{first.pk}/regenerate/", **JSON)

    assert response.status_code == 201
    again = Run.objects.get(pk=response.json()["run"])
    assert response.json() == {
        "run": again.pk,
        "conversation": first.conversation_id,
        "url": f"/chat/c/{first.conversation_id}/",
    }
    assert (again.agent, again.actor, again.input, again.conversation_id, again.state) == (
        help_desk,
        people.member,
        "Where is my badge?",
        first.conversation_id,
        "queued",
    )
    assert AuditEvent.objects.filter(action="run.queued", run=str(again.pk)).exists()
    # A second click on the same button answers the run the first one started.
    twice = client.post(f"/chat/runs/{first.pk}/regenerate/", **JSON)
    assert (twice.status_code, twice.json()["run"]) == (200, again.pk)
    assert Run.objects.count() == 2


def test_only_the_asker_regenerates_only_the_latest_ended_run(client, people, help_desk):
    earlier = answered(people.member, help_desk)
    latest = answered(people.member, help_desk, conversation=earlier.conversation)
    client.force_login(people.outsider)
    assert client.post(f"/chat/runs/{latest.pk}/regenerate/", **JSON).status_code == 404

    client.force_login(people.member)
    old = client.post(f"/chat/runs/{earlier.pk}/regenerate/", **JSON)
    assert old.status_code == 409
    assert old.json()["detail"] == "only the conversation's latest answer can be regenerated"
    latest.state = "running"
    latest.save(update_fields=["state"])
    going = client.post(f"/chat/runs/{latest.pk}/regenerate/", **JSON)
    assert going.status_code == 409
    assert going.json()["detail"] == "the run is still going: stop it first"
    plain = client.post(f"/chat/runs/{latest.pk}/regenerate/", follow=True)
    assert "The run is still going: stop it first" in plain.content.decode()
    assert Run.objects.count() == 2


def test_stop_cancels_a_queued_run_and_its_part_says_stopped(client, people, help_desk):
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    client.force_login(people.member)
    sent = client.post(
        "/chat/send/",
        {"agent": help_desk.pk, "text": "hello", "conversation": conversation.pk},
        **JSON,
    ).json()
    part = client.get(f"/chat/runs/{sent['run']}/").content.decode()
    assert f'action="/chat/runs/{sent["run"]}/stop/"' in part
    assert "/regenerate/" not in part  # not while it goes

    assert client.post(f"/chat/runs/{sent['run']}/stop/", **JSON).status_code == 202

    part = client.get(f"/chat/runs/{sent['run']}/").content.decode()
    assert "Stopped: cancelled before it started" in part
    assert "/stop/" not in part
    assert f'action="/chat/runs/{sent["run"]}/regenerate/"' in part
    assert "/feedback/" not in part  # nothing to rate
