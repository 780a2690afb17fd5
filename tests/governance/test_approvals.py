"""Approvals of tool calls through real runs: a scripted model asks for a write tool, the run
parks, reviewers decide, and the run executes exactly the approved payload (or ends, saying
why). Escalations of low-confidence answers the same way."""

import hashlib
import json
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import Group
from django.core import mail
from django.utils import timezone

from agents.models import (
    Agent,
    Conversation,
    Deployment,
    Message,
    ModelRoute,
    Run,
    RunState,
    RunStep,
)
from agents.orchestrator import run_execute
from agents.services import run_cancel, run_start
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance.approvals import (
    ApprovalError,
    approval_decide,
    approvals_expire,
    approvals_for,
    escalation_decide,
)
from governance.models import (
    Action,
    ApprovalRequest,
    ApprovalStatus,
    Escalation,
    EscalationStatus,
)
from governance.services import access_grant
from tests.model_server import Reply
from tests.personas import ASKED, parked, resume
from tools.models import DemoTicket, Tool, ToolInvocation

pytestmark = pytest.mark.django_db


def actions(run: Run) -> list[str]:
    return list(
        AuditEvent.objects.filter(run=str(run.pk))
        .order_by("stream_seq")
        .values_list("action", flat=True)
    )


def test_a_write_call_waits_for_a_reviewer_and_nothing_happens_meanwhile(server, help_desk, people):
    run = parked(server, help_desk, people.member)

    request = ApprovalRequest.objects.get(run_id=run.pk)
    assert run.state == RunState.AWAITING_APPROVAL
    assert run.lease_holder == ""
    assert (request.status, request.tool_name, request.arguments) == (
        ApprovalStatus.PENDING,
        "create_ticket",
        ASKED,
    )
    canonical = json.dumps(ASKED, sort_keys=True, separators=(",", ":"))
    assert request.arguments_hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert request.reasons == ["tool.risk_write"]
    assert request.key == f"run:{run.pk}:step:0:call:0"
    assert request.requested_by == people.member
    assert list(RunStep.objects.filter(run=run).values_list("kind", flat=True)) == [
        "model",
        "approval",
    ]
    assert not DemoTicket.objects.exists()
    assert not ToolInvocation.objects.exists()
    assert "approval.requested" in actions(run)
    assert "run.awaiting_approval" in actions(run)
    # parked: another worker does not pick it up
    assert resume(run).state == RunState.AWAITING_APPROVAL
    assert not DemoTicket.objects.exists()


def test_the_requester_never_approves_their_own_request_even_as_a_reviewer(
    server, help_desk, people
):
    people.member.groups.add(Group.objects.get(name="Reviewer"))
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)

    assert request not in approvals_for(people.member)
    with pytest.raises(ApprovalError, match="another reviewer must decide"):
        approval_decide(approval_id=request.pk, decided_by=people.member, approve=True)

    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING
    assert Run.objects.get(pk=run.pk).state == RunState.AWAITING_APPROVAL
    assert not DemoTicket.objects.exists()


def test_an_approved_call_runs_once_with_the_requested_arguments(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    assert list(approvals_for(people.reviewer)) == [request]

    approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=True)
    assert Run.objects.get(pk=run.pk).state == RunState.QUEUED
    done = resume(run)
    again = resume(done)

    assert done.state == again.state == RunState.SUCCEEDED
    assert done.answer == "Ticket opened for you."
    ticket = DemoTicket.objects.get()
    assert (ticket.title, ticket.idempotency_key) == ("VPN down", request.key)
    assert list(approvals_for(people.reviewer)) == []
    trail = actions(run)
    assert trail.index("approval.approved") < trail.index("run.requeued")
    assert trail.index("run.requeued") < trail.index("tool.invoked")


def test_an_edited_approval_runs_the_edit_and_records_both(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    edit = {"title": "VPN down on floor 3", "priority": "high"}

    with pytest.raises(ApprovalError, match=r"do not fit the tool: invalid arguments at /title"):
        approval_decide(
            approval_id=request.pk, decided_by=people.reviewer, approve=True, arguments={"title": 5}
        )
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING

    approval_decide(
        approval_id=request.pk, decided_by=people.reviewer, approve=True, arguments=edit
    )
    done = resume(run)

    assert done.state == RunState.SUCCEEDED
    ticket = DemoTicket.objects.get()
    assert (ticket.title, ticket.priority) == ("VPN down on floor 3", "high")
    step = RunStep.objects.get(run=run, kind="tool")
    assert step.input["arguments"] == edit
    approved = AuditEvent.objects.get(run=str(run.pk), action="approval.approved")
    assert json.loads(approved.data) | {} == {
        "tool": "create_ticket",
        "comment": "",
        "edited": True,
        "requested": ASKED,
        "approved": edit,
    }


def test_a_rejection_ends_the_run_and_tells_the_user_why(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)

    approval_decide(
        approval_id=request.pk,
        decided_by=people.reviewer,
        approve=False,
        comment="use the self-service portal",
    )
    done = resume(run)

    assert done.state == RunState.REJECTED
    assert done.error == (
        "a reviewer rejected the call to create_ticket (use the self-service portal)"
    )
    assert not DemoTicket.objects.exists()
    assert not ToolInvocation.objects.exists()
    assert "approval.rejected" in actions(run)


def test_an_expired_request_rejects_the_step_and_cannot_be_decided(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    ApprovalRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now())

    assert approvals_expire() == 1
    with pytest.raises(ApprovalError, match="already expired by Warden"):
        approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=True)
    done = resume(run)

    assert done.state == RunState.REJECTED
    assert done.error == "nobody approved the call to create_ticket in time: the request expired"
    assert not DemoTicket.objects.exists()
    assert approvals_expire() == 0


def test_deciding_a_request_past_its_time_expires_it_instead(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    ApprovalRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now())

    with pytest.raises(ApprovalError, match="expired before the decision"):
        approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=True)

    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.EXPIRED
    assert resume(run).state == RunState.REJECTED
    assert not DemoTicket.objects.exists()


def test_only_the_designated_approver_groups_decide(server, help_desk, people):
    it_leads = Group.objects.create(name="IT leads")
    lead = type(people.member).objects.create_user("lead")  # no reviewer role: the group is it
    lead.groups.add(it_leads)
    help_desk.approver_groups.add(it_leads)
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)

    assert list(approvals_for(people.reviewer)) == []
    assert list(approvals_for(lead)) == [request]
    with pytest.raises(ApprovalError, match=r"^no such approval request$"):
        approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=True)
    approval_decide(approval_id=request.pk, decided_by=lead, approve=True)

    assert resume(run).state == RunState.SUCCEEDED
    assert DemoTicket.objects.count() == 1


def test_a_second_decision_is_told_who_decided(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=False)

    with pytest.raises(ApprovalError, match=f"already rejected by {people.reviewer.username}"):
        approval_decide(approval_id=request.pk, decided_by=people.admin, approve=True)

    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.REJECTED


def test_a_change_to_the_tool_after_approval_voids_it(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=True)
    ApprovalRequest.objects.filter(pk=request.pk).update(tool_version="0" * 16)

    done = resume(run)

    assert done.state == RunState.REJECTED
    assert done.error == "the tool create_ticket changed after the call was approved"
    assert not DemoTicket.objects.exists()


def test_reviewers_are_told_by_websocket_and_email(
    server, help_desk, people, django_capture_on_commit_callbacks, settings
):
    from config.celery import app

    layer = get_channel_layer()
    inbox = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("reviewers", inbox)
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            run = parked(server, help_desk, people.member)
    finally:
        app.conf.task_always_eager = eager
    request = ApprovalRequest.objects.get(run_id=run.pk)

    message = async_to_sync(layer.receive)(inbox)
    assert message["event"] == {
        "type": "approval.requested",
        "approval": request.pk,
        "run": run.pk,
        "tool": "create_ticket",
    }
    assert len(mail.outbox) == 1
    assert sorted(mail.outbox[0].to) == ["admin@example.com", "reviewer@example.com"]
    assert "create_ticket" in mail.outbox[0].subject


def test_a_decision_stands_when_the_settings_change_after_it(server, help_desk, people):
    server.script(
        "primary",
        Reply.call("create_ticket", ASKED),
        Reply.call("create_ticket", ASKED),
        Reply.say("Ticket opened for you."),
    )
    rejected, edited = (
        resume(run_start(agent=help_desk, conversation=c, actor=people.member, input="ticket"))
        for c in [
            Conversation.objects.create(owner=people.member, agent=help_desk) for _ in range(2)
        ]
    )
    approval_decide(
        approval_id=ApprovalRequest.objects.get(run_id=rejected.pk).pk,
        decided_by=people.reviewer,
        approve=False,
    )
    approval_decide(
        approval_id=ApprovalRequest.objects.get(run_id=edited.pk).pk,
        decided_by=people.reviewer,
        approve=True,
        arguments={"title": "VPN down (checked)"},
    )
    Tool.objects.filter(name="create_ticket").update(approval="never")  # no reviewer needed now

    assert resume(rejected).state == RunState.REJECTED
    assert resume(edited).state == RunState.SUCCEEDED
    assert list(DemoTicket.objects.values_list("title", flat=True)) == ["VPN down (checked)"]


def test_cancelling_a_parked_run_withdraws_its_request(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)

    run_cancel(run=run, actor=people.member)

    assert Run.objects.get(pk=run.pk).state == RunState.CANCELLED
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.WITHDRAWN
    assert list(approvals_for(people.reviewer)) == []
    with pytest.raises(ApprovalError, match="the run was cancelled"):
        approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=True)
    assert resume(run).state == RunState.CANCELLED
    assert not DemoTicket.objects.exists()
    assert "approval.withdrawn" in actions(run)


# Escalations: answers below the agent's confidence threshold.


@pytest.fixture
def offline_agent(team):
    """The offline model: with nothing to ground an answer in, it says it does not know, with
    confidence 0, below any threshold."""
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(name="Oracle", slug=f"o-{uuid.uuid4().hex[:6]}", route=route)
    for obj in (agent, route):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
    return agent


def held(agent, user) -> Run:
    conversation = Conversation.objects.create(owner=user, agent=agent)
    run = run_start(
        agent=agent, conversation=conversation, actor=user, input="When was the company founded?"
    )
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def test_a_low_confidence_answer_is_held_then_released_as_edited(offline_agent, people):
    run = held(offline_agent, people.member)
    escalation = Escalation.objects.get(run_id=run.pk)
    said = Message.objects.filter(run_id=run.pk, role="assistant")
    assert list(said.values_list("content", flat=True)) == ["(held for review)"]

    assert (run.state, run.answer) == (RunState.AWAITING_REVIEW, "")
    assert run.get_state_display() == "Held for review"
    assert "I don't know" in escalation.answer
    assert escalation.confidence < escalation.threshold == offline_agent.confidence_threshold

    with pytest.raises(ApprovalError, match="another reviewer must decide"):
        escalation_decide(escalation_id=escalation.pk, decided_by=people.member, release=True)
    escalation_decide(
        escalation_id=escalation.pk,
        decided_by=people.reviewer,
        release=True,
        answer="In 1998, in Lyon.",
    )

    run.refresh_from_db()
    assert (run.state, run.answer) == (RunState.SUCCEEDED, "In 1998, in Lyon.")
    assert list(said.values_list("content", flat=True)) == ["In 1998, in Lyon."]
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.RELEASED
    trail = actions(run)
    assert trail.index("escalation.held") < trail.index("escalation.released")
    assert trail.index("escalation.released") < trail.index("run.succeeded")
    with pytest.raises(ApprovalError, match=f"already released by {people.reviewer.username}"):
        escalation_decide(escalation_id=escalation.pk, decided_by=people.admin, release=False)


def test_a_rejected_answer_never_reaches_the_user(offline_agent, people):
    run = held(offline_agent, people.member)
    escalation = Escalation.objects.get(run_id=run.pk)

    escalation_decide(
        escalation_id=escalation.pk,
        decided_by=people.reviewer,
        release=False,
        comment="ask HR directly",
    )

    run.refresh_from_db()
    assert run.state == RunState.REJECTED
    assert run.answer == ""
    assert run.error == "a reviewer did not release the answer: ask HR directly"
    assert "I don't know" not in json.dumps(list(Run.objects.values("answer", "error")))
    assert list(
        Message.objects.filter(run_id=run.pk, role="assistant").values_list("content", flat=True)
    ) == ["(a reviewer did not release the answer: ask HR directly)"]


def test_an_answer_at_or_above_the_threshold_is_delivered(offline_agent, people):
    offline_agent.confidence_threshold = 0
    offline_agent.save(update_fields=["confidence_threshold"])

    run = held(offline_agent, people.member)

    assert run.state == RunState.SUCCEEDED
    assert "I don't know" in run.answer
    assert not Escalation.objects.exists()


def test_a_held_answer_is_never_streamed_or_published(offline_agent, people):
    import time

    layer = get_channel_layer()
    conversation = Conversation.objects.create(owner=people.member, agent=offline_agent)
    run = run_start(
        agent=offline_agent, conversation=conversation, actor=people.member, input="Who won?"
    )
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"run.{run.pk}", channel)

    run_execute(run_id=run.pk, holder="test")
    time.sleep(0.5)  # the publisher thread sends after the commit
    events = []
    while True:
        try:
            events.append(async_to_sync(_receive)(layer, channel)["event"])
        except TimeoutError:
            break

    assert Run.objects.get(pk=run.pk).state == RunState.AWAITING_REVIEW
    assert [e["type"] for e in events] == ["step", "held"]
    assert "I don't know" not in json.dumps(events)


async def _receive(layer, channel):
    import asyncio

    return await asyncio.wait_for(layer.receive(channel), 1)
