"""Runs end to end: a real Celery worker, real HTTP to a scripted model, real PostgreSQL and
Redis. Every test commits (the worker is another process)."""

import json
import threading
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunState, RunStep
from agents.orchestrator import run_execute
from agents.provenance import unmark
from agents.services import (
    LeaseLost,
    StepRecord,
    run_acquire_lease,
    run_cancel,
    run_checkpoint,
    run_start,
    runs_to_resume,
)
from agents.tasks import run_execute_task
from audit.models import AuditEvent
from audit.selectors import audit_verify_chain
from tests.access import grant_agent
from tests.model_server import Reply
from tools.models import DemoTicket, Tool, ToolInvocation

pytestmark = pytest.mark.usefixtures("committing_db")


@pytest.fixture
def member(agent):
    member = get_user_model().objects.create_user(f"mia-{uuid.uuid4().hex[:6]}")
    grant_agent(member, agent)
    return member


@pytest.fixture
def agent(server):
    route = ModelRoute.objects.create(
        name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0, timeout_seconds=10
    )
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    agent = Agent.objects.create(
        name="Help desk",
        slug=f"help-{uuid.uuid4().hex[:6]}",
        route=route,
        system_prompt="You are the IT help desk.",
        max_steps=10,
    )
    tools = Tool.objects.filter(name__in=["create_ticket", "get_ticket_status"])
    # These tests are about durability: the write tool runs without a reviewer here
    # (tests/governance/test_approvals.py parks runs on it).
    # The status tool's output is trusted: the write after it needs no reviewer either
    # (tests/governance/test_provenance.py is about untrusted output).
    tools.update(enabled=True, approval="never", output_trusted=True)
    agent.tools.set(tools)
    return agent


def start(agent, user, text="my VPN is down, open a ticket and check it"):
    conversation = Conversation.objects.create(owner=user, agent=agent)
    return run_start(agent=agent, conversation=conversation, actor=user, input=text)


def final(run, timeout=60) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run.refresh_from_db()
        if run.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED):
            return run
        assert time.monotonic() < deadline, f"run still {run.state}"
        time.sleep(0.1)


def kinds(run):
    return list(RunStep.objects.filter(run=run).order_by("index").values_list("kind", flat=True))


def test_a_run_with_three_tool_calls_completes(server, agent, member, celery_worker_process):
    server.script(
        "primary",
        Reply.call("get_ticket_status", {"ticket": 7}),
        Reply.call("create_ticket", {"title": "VPN down", "priority": "high"}),
        Reply.call("get_ticket_status", {"ticket": 999}),
        Reply.say("Ticket opened; ticket 7 is not yours."),
    )

    run = final(start(agent, member))

    assert run.state == RunState.SUCCEEDED, run.error
    assert run.answer == "Ticket opened; ticket 7 is not yours."
    assert kinds(run) == ["model", "tool", "model", "tool", "model", "tool", "model"]
    assert (run.prompt_tokens, run.completion_tokens) == (44, 28)  # 4 model steps of 11 + 7
    roles = list(run.conversation.messages.order_by("id").values_list("role", flat=True))
    assert roles == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    last_request = server.requests["primary"][-1]["messages"]
    # The agent's system prompt, then Warden's notice on data (agents.provenance).
    assert [m["role"] for m in last_request] == ["system", "system", *roles[:-1]]
    ticket = DemoTicket.objects.get()
    assert json.loads(unmark(last_request[6]["content"])) == {
        "ticket": ticket.pk,
        "status": "open",
        "priority": "high",
    }
    write = ToolInvocation.objects.get(tool="create_ticket")
    assert write.key == f"run:{run.pk}:step:2:call:0"
    assert write.tool_version == Tool.objects.get(name="create_ticket").version != ""
    assert write.actor == run.actor
    assert write.latency_ms > 0
    assert ticket.idempotency_key == f"run:{run.pk}:step:2:call:0"
    actions = list(
        AuditEvent.objects.filter(run=str(run.pk))
        .order_by("sequence")
        .values_list("action", flat=True)
    )
    assert actions == [
        "run.queued",
        "policy.decided",  # may the member start it
        *["run.step.model", "tool.invoked", "policy.decided"] * 3,  # each call decided
        "run.step.model",
        "run.succeeded",
    ]
    assert audit_verify_chain().ok


def test_malformed_tool_calls_go_back_to_the_model(server, agent, member, celery_worker_process):
    server.script(
        "primary",
        Reply.call("create_ticket", '{"title": "VPN'),
        Reply.call("create_ticket", {"title": "VPN", "priority": "urgent"}),
        Reply.say("Sorry, I could not."),
    )

    run = final(start(agent, member))

    assert run.state == RunState.SUCCEEDED
    errors = [s.output["error"] for s in RunStep.objects.filter(run=run, kind="tool")]
    assert errors[0].startswith("the arguments are not valid JSON")
    assert errors[1].startswith("invalid arguments at /priority: 'urgent' is not one of")
    assert (
        json.loads(server.requests["primary"][1]["messages"][-1]["content"])["error"] == errors[0]
    )
    assert not DemoTicket.objects.exists()


def test_a_model_that_keeps_calling_badly_fails_the_run_clearly(
    server, agent, member, celery_worker_process
):
    server.default("primary", Reply.call("delete_everything", {}))

    run = final(start(agent, member))

    assert run.state == RunState.FAILED
    assert run.error == (
        "the model made 3 invalid tool calls; the last: there is no tool named "
        "'delete_everything' here"
    )


def test_max_steps_ends_the_run(server, agent, member, celery_worker_process):
    agent.max_steps = 3
    agent.save()
    server.default("primary", Reply.call("get_ticket_status", {"ticket": 1}))

    run = final(start(agent, member))

    assert run.state == RunState.FAILED
    assert run.error == "stopped after 3 steps (the agent's limit) without a final answer"
    assert RunStep.objects.filter(run=run).count() == 3


def test_the_token_limit_ends_the_run(server, agent, member, celery_worker_process):
    agent.max_tokens_per_run = 30
    agent.save()
    server.default("primary", Reply.call("get_ticket_status", {"ticket": 1}))

    run = final(start(agent, member))

    assert run.state == RunState.FAILED
    assert run.error == "stopped at 36 tokens (the agent's limit is 30)"


def test_cancel_mid_run(server, agent, member, celery_worker_process):
    server.default("primary", Reply(tool_calls=[("get_ticket_status", '{"ticket": 1}')], delay=0.5))
    run = start(agent, member)
    deadline = time.monotonic() + 30
    while not RunStep.objects.filter(run=run).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    run_cancel(run=run, actor=member)
    run = final(run)

    assert (run.state, run.error) == (RunState.CANCELLED, "cancelled by request")
    steps = RunStep.objects.filter(run=run).count()
    time.sleep(1)
    assert RunStep.objects.filter(run=run).count() == steps  # nothing after the cancel


def test_a_worker_killed_after_the_effect_and_before_the_checkpoint(
    server, agent, member, start_worker, tmp_path
):
    lease = {"WARDEN_RUN_LEASE_SECONDS": "2"}
    doomed = start_worker(
        WARDEN_FAILPOINT="after_tool_effect", WARDEN_FAILPOINT_ONCE=str(tmp_path / "hit"), **lease
    )
    server.script(
        "primary", Reply.call("create_ticket", {"title": "VPN down"}), Reply.say("Opened.")
    )

    run = start(agent, member)
    assert doomed.wait(60) == -9  # SIGKILLed between the effect and its checkpoint
    assert DemoTicket.objects.count() == 1
    assert kinds(run) == ["model"]  # the tool step was never committed

    start_worker(**lease)
    time.sleep(2.5)  # the dead worker's lease expires
    assert runs_to_resume() == [run.pk]
    run_execute_task.delay(run.pk)  # what the beat job does
    run = final(run)

    assert run.state == RunState.SUCCEEDED, run.error
    assert kinds(run) == ["model", "tool", "model"]
    assert DemoTicket.objects.count() == 1  # exactly one effect
    assert ToolInvocation.objects.filter(key=f"run:{run.pk}:step:0:call:0").count() == 1
    assert server.count("primary") == 2  # the committed model step was not repeated


def test_a_lost_broker_message_loses_no_run(server, agent, member, start_worker, settings):
    import redis

    run = start(agent, member)  # enqueued in Redis, but no worker yet
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # and Redis forgets it

    start_worker()
    time.sleep(1)
    assert Run.objects.get(pk=run.pk).state == RunState.QUEUED
    assert runs_to_resume(stale_after=0) == [run.pk]
    run_execute_task.delay(run.pk)

    assert final(run).state == RunState.SUCCEEDED


def test_two_workers_racing_on_one_run_only_one_advances(server, agent, member):
    conversation = Conversation.objects.create(owner=member, agent=agent)
    run = Run.objects.create(agent=agent, conversation=conversation, actor=member, input="hi")
    server.script("primary", Reply(text="Hello.", delay=0.5))

    def worker(holder: str) -> None:
        try:
            run_execute(run_id=run.pk, holder=holder)
        finally:
            connection.close()  # each thread's own connection

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    run.refresh_from_db()
    assert run.state == RunState.SUCCEEDED
    assert kinds(run) == ["model"]
    assert server.count("primary") == 1
    assert run.fencing_token == 1


def test_a_worker_whose_lease_was_taken_over_cannot_write(agent, member):
    conversation = Conversation.objects.create(owner=member, agent=agent)
    run = Run.objects.create(agent=agent, conversation=conversation, actor=member, input="hi")
    stale = run_acquire_lease(run_id=run.pk, holder="slow worker")
    Run.objects.filter(pk=run.pk).update(lease_expires_at="2000-01-01T00:00:00Z")  # it stalled
    fresh = run_acquire_lease(run_id=run.pk, holder="new worker")

    with pytest.raises(LeaseLost):
        run_checkpoint(
            run_id=run.pk,
            token=stale,
            index=0,
            conversation_id=conversation.pk,
            step=StepRecord("model", {}, {}),
            messages=[],
            audit_action="run.step.model",
            audit_data={},
        )

    assert (stale, fresh) == (1, 2)
    assert not RunStep.objects.filter(run=run).exists()
    assert not AuditEvent.objects.filter(run=str(run.pk)).exists()
    assert Run.objects.get(pk=run.pk).tokens == 0
    assert run_acquire_lease(run_id=run.pk, holder="third") is None  # the new lease is live


def test_a_checkpoint_commits_its_step_messages_totals_and_every_audit_event(agent, member):
    conversation = Conversation.objects.create(owner=member, agent=agent)
    run = Run.objects.create(agent=agent, conversation=conversation, actor=member, input="hi")
    token = run_acquire_lease(run_id=run.pk, holder="worker")

    done = run_checkpoint(
        run_id=run.pk,
        token=token,
        index=0,
        conversation_id=conversation.pk,
        step=StepRecord("model", {"tools": []}, {"content": "hello"}, prompt_tokens=3),
        messages=[{"role": "assistant", "content": "hello", "tokens": 3}],
        audit_action="run.step.model",
        audit_data={"deployment": "b"},
        extra_audit=[("route.fallback", {"skipped": "a"}), ("route.fallback", {"skipped": "x"})],
    )

    assert RunStep.objects.get(pk=done.step.pk).output == {"content": "hello"}
    assert done.cancel_requested is False
    assert list(run.messages.values_list("role", "content", "tokens")) == [
        ("assistant", "hello", 3)
    ]
    assert Run.objects.get(pk=run.pk).prompt_tokens == 3
    events = AuditEvent.objects.filter(run=str(run.pk)).order_by("sequence")
    assert [(e.action, e.stream_seq) for e in events] == [
        ("run.step.model", 1),
        ("route.fallback", 2),
        ("route.fallback", 3),
    ]
    assert audit_verify_chain().ok


def test_steps_and_tokens_are_published_to_the_runs_group(
    server, agent, member, celery_worker_process
):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    conversation = Conversation.objects.create(owner=member, agent=agent)
    run = Run.objects.create(agent=agent, conversation=conversation, actor=member, input="hi")
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"run.{run.pk}", channel)
    server.script("primary", Reply.say("Your VPN ticket is open"))

    run_execute_task.delay(run.pk)
    final(run)
    events = []
    while True:
        try:
            events.append(async_to_sync(_receive)(layer, channel)["event"])
        except TimeoutError:
            break

    assert "".join(e["text"] for e in events if e["type"] == "token") == "Your VPN ticket is open"
    assert [e["kind"] for e in events if e["type"] == "step"] == ["model"]


async def _receive(layer, channel):
    import asyncio

    return await asyncio.wait_for(layer.receive(channel), 2)


def test_a_run_nobody_watches_live_publishes_only_its_end_and_does_not_stream(
    server, agent, member, celery_worker_process
):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    conversation = Conversation.objects.create(owner=member, agent=agent)
    run = Run.objects.create(
        agent=agent, conversation=conversation, actor=member, input="hi", stream=False
    )
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"run.{run.pk}", channel)
    server.script("primary", Reply.say("Your VPN ticket is open"))

    run_execute_task.delay(run.pk)
    assert final(run).answer == "Your VPN ticket is open"
    # No step and no token: only what settles the run (a waiting request wakes on it).
    assert async_to_sync(_receive)(layer, channel)["event"] == {
        "type": "final",
        "state": "succeeded",
    }
    with pytest.raises(TimeoutError):
        async_to_sync(_receive)(layer, channel)
    assert not server.requests["primary"][0].get("stream")
