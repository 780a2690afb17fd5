"""The reviewer inbox over HTTP: what each reviewer sees, the filters, and deciding from the
detail pages (the run moves on; a refused or malformed decision changes nothing)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Conversation, Run
from audit.models import AuditEvent
from governance.models import ApprovalRequest, Escalation
from tests.personas import parked, resume

pytestmark = pytest.mark.django_db


def test_a_reviewer_sees_the_request_with_its_reasons_and_a_count(
    client, people, help_desk, server
):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)

    page = client.get("/inbox/").content.decode()

    assert f'href="/inbox/approvals/{request.pk}/">Run create_ticket</a>' in page
    assert "the tool changes a system (risk: write)" in page
    assert 'data-inbox-count aria-label="1 pending">1</span>' in page
    assert 'data-count="1"' in page
    detail = client.get(f"/inbox/approvals/{request.pk}/").content.decode()
    assert "&quot;title&quot;: &quot;VPN down&quot;" in detail  # the exact arguments
    assert "open a ticket" in detail  # the conversation
    assert "approval.requested" in detail  # the run's trail


def test_the_requester_and_an_outsider_see_no_inbox_and_cannot_decide(
    client, people, help_desk, server
):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)

    for who in (people.member, people.outsider):
        client.force_login(who)
        assert "Run create_ticket" not in client.get("/inbox/").content.decode()
        assert client.get(f"/inbox/approvals/{request.pk}/").status_code == 404
        decided = client.post(f"/inbox/approvals/{request.pk}/", {"decision": "approve"})
        assert decided.status_code == 404
    request.refresh_from_db()
    assert request.status == "pending"
    assert Run.objects.get(pk=run.pk).state == "awaiting_approval"
    assert 'id="inbox-link"' not in client.get("/chat/").content.decode()  # no inbox link


def test_approving_in_the_inbox_requeues_the_run_and_is_audited(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)

    response = client.post(
        f"/inbox/approvals/{request.pk}/",
        {"decision": "approve", "arguments": '{"title": "VPN down (edited)"}', "comment": "ok"},
        follow=True,
    )

    assert response.redirect_chain == [("/inbox/", 302)]
    assert "Approved: create_ticket for" in response.content.decode()
    request.refresh_from_db()
    assert (request.status, request.approved_arguments, request.comment) == (
        "approved",
        {"title": "VPN down (edited)"},
        "ok",
    )
    assert Run.objects.get(pk=run.pk).state == "queued"
    event = AuditEvent.objects.get(action="approval.approved", run=str(run.pk))
    assert event.actor_id == str(people.reviewer.pk)


def test_a_malformed_edit_is_refused_and_what_was_typed_stays(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)

    response = client.post(
        f"/inbox/approvals/{request.pk}/",
        {"decision": "approve", "arguments": '{"title": ', "comment": "my note"},
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "The edited arguments are not JSON" in page
    assert ">{&quot;title&quot;: </textarea>" in page
    assert ">my note</textarea>" in page
    request.refresh_from_db()
    assert request.status == "pending"
    assert Run.objects.get(pk=run.pk).state == "awaiting_approval"


def test_rejecting_with_a_comment(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)

    client.post(f"/inbox/approvals/{request.pk}/", {"decision": "reject", "comment": "no"})

    request.refresh_from_db()
    assert (request.status, request.comment, request.decided_by) == (
        "rejected",
        "no",
        people.reviewer,
    )
    again = client.post(f"/inbox/approvals/{request.pk}/", {"decision": "approve"})
    assert "Already rejected by" in again.content.decode()
    request.refresh_from_db()
    assert request.status == "rejected"


def _held(people, agent, answer="Maybe 25 days.") -> Escalation:
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    run = Run.objects.create(
        agent=agent,
        conversation=conversation,
        actor=people.member,
        input="leave?",
        state="awaiting_review",
    )
    return Escalation.objects.create(
        run_id=run.pk,
        agent_id=agent.pk,
        requested_by=people.member,
        question="leave?",
        answer=answer,
        confidence="0.400",
        threshold="0.80",
    )


def test_releasing_a_held_answer_reaches_the_user(client, people, help_desk):
    held = _held(people, help_desk)
    client.force_login(people.member)
    waiting = client.get(f"/chat/runs/{held.run_id}/").content.decode()
    assert "Held for review: the answer" in waiting
    assert "Maybe 25 days." not in waiting  # not before a reviewer releases it
    client.force_login(people.reviewer)
    detail = client.get(f"/inbox/answers/{held.pk}/").content.decode()
    assert "<p>Maybe 25 days.</p>" in detail

    client.post(
        f"/inbox/answers/{held.pk}/",
        {"decision": "release", "answer": "25 days a year.", "comment": ""},
    )

    run = Run.objects.get(pk=held.run_id)
    assert (run.state, run.answer) == ("succeeded", "25 days a year.")
    client.force_login(people.member)
    assert "25 days a year." in client.get(f"/chat/runs/{run.pk}/").content.decode()


def test_the_reviewer_s_comment_reaches_the_requester(client, people, help_desk, server):
    held = _held(people, help_desk)
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)
    assert (
        "the requester reads it" in client.get(f"/inbox/approvals/{request.pk}/").content.decode()
    )

    client.post(
        f"/inbox/approvals/{request.pk}/",
        {"decision": "approve", "arguments": "", "comment": "Only for the Berlin office."},
    )
    client.post(
        f"/inbox/answers/{held.pk}/",
        {"decision": "release", "answer": "Maybe 25 days.", "comment": "HR: see your contract."},
    )

    client.force_login(people.member)
    decided = client.get(f"/chat/runs/{run.pk}/").content.decode()  # before the run resumes
    done = client.get(f"/chat/runs/{resume(run).pk}/").content.decode()
    released = client.get(f"/chat/runs/{held.run_id}/").content.decode()
    for page in (decided, done):
        assert "Approved by a reviewer: “Only for the Berlin office.”" in page
    assert "Ticket opened for you." in done
    assert "Maybe 25 days." in released
    assert "Released by a reviewer: “HR: see your contract.”" in released


def test_the_filters(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    held = _held(people, help_desk)
    client.force_login(people.reviewer)

    def shown(query: str) -> set[str]:
        page = client.get(f"/inbox/?{query}").content.decode()
        return {kind for kind in ("approval", "answer") if f'data-kind="{kind}"' in page}

    assert shown("") == {"approval", "answer"}
    assert shown("kind=answer") == {"answer"}
    assert shown("kind=approval") == {"approval"}
    assert shown("tool=create_ticket") == {"approval"}
    assert shown("tool=send_email") == set()
    assert shown("risk=write") == {"approval"}
    assert shown("risk=read") == set()
    assert shown(f"agent={help_desk.pk}") == {"approval", "answer"}
    assert shown(f"agent={help_desk.pk + 1000}") == set()
    assert shown("age=1h") == set()
    ApprovalRequest.objects.filter(pk=request.pk).update(
        created_at=timezone.now() - timedelta(hours=2)
    )
    assert shown("age=1h") == {"approval"}
    # Values that are not among the choices are no filter (and never a 500).
    for nonsense in (
        "age=nonsense",
        "agent=x",
        "risk=y",
        "agent=%C2%B2",
        "agent=" + "9" * 5000,
        "kind=all",
    ):
        assert shown(nonsense) == {"approval", "answer"}, nonsense[:30]
    # A NUL is not a value at all: the door refuses it (integrations.inputs), readably.
    refused = client.get("/inbox/?tool=%00")
    assert refused.status_code == 400
    assert "The query string holds a NUL character" in refused.content.decode()
    part = client.get("/inbox/?part=1").content.decode()
    assert part.startswith('<div id="inbox-items" data-count="2">')
    assert f'href="/inbox/answers/{held.pk}/"' in part


def test_a_post_without_a_decision_decides_nothing(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)

    for data, said in (
        ({}, "Choose approve or reject"),
        ({"decision": "maybe"}, "Choose approve or reject"),
        ({"decision": "approve", "comment": "a\x00b"}, "The comment cannot be kept"),
        (
            {"decision": "approve", "arguments": '{"title": "a\\u0000b"}'},
            "arguments.title contains a NUL character",
        ),
        (
            {"decision": "approve", "arguments": '{"title": "\\ud800"}'},
            "The edited arguments cannot be kept: arguments.title contains an unpaired "
            "surrogate, which is not text",
        ),
        (
            {"decision": "approve", "arguments": '{"a": {"\\udfff": 1}}'},
            "arguments.a.\\udfff is a key that contains an unpaired surrogate",
        ),
        ({"decision": "approve", "arguments": "[" * 3000 + "]" * 3000}, "nested too deeply"),
    ):
        response = client.post(f"/inbox/approvals/{request.pk}/", data)
        assert response.status_code == 200
        assert said in response.content.decode(), data
        assert "Traceback" not in response.content.decode()
    request.refresh_from_db()
    assert (request.status, request.decided_by, request.approved_arguments) == (
        "pending",
        None,
        None,
    )
    assert Run.objects.get(pk=run.pk).state == "awaiting_approval"


def test_a_member_of_a_configured_approver_group_has_an_inbox(client, people, help_desk, team):
    help_desk.approver_groups.add(team)  # no request names the team yet
    client.force_login(people.member)
    assert 'id="inbox-link"' in client.get("/chat/").content.decode()
    client.force_login(people.outsider)
    assert 'id="inbox-link"' not in client.get("/chat/").content.decode()


def test_the_agent_filter_offers_agents_with_only_held_answers(client, people, assistant):
    _held(people, assistant)
    client.force_login(people.reviewer)

    page = client.get("/inbox/").content.decode()

    assert f'<option value="{assistant.pk}">{assistant.name}</option>' in page
