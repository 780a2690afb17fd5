"""Runs survive transient faults (DESIGN.md §4): a database connection dropped mid-call, a
tool call longer than the lease, a dependency that stays away, a worker killed mid-call. A real
Celery worker, real HTTP to a scripted model and to an enterprise endpoint, real PostgreSQL
(whose server drops the worker's connection, as a restart or pg_terminate_backend would)."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from agents.faults import transient
from agents.gateway import ModelUnavailable
from agents.heartbeat import lease_heartbeat
from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunState, RunStep
from agents.services import run_acquire_lease, run_start, runs_release_worker, runs_to_resume
from agents.tasks import run_execute_task
from audit.models import AuditEvent
from config.celery import app
from tests.access import grant_agent
from tests.model_server import Reply
from tools.models import Tool, ToolInvocation
from tools.tests.endpoint import Answer

pytestmark = pytest.mark.usefixtures("committing_db")


@pytest.fixture
def tool(crm):
    return Tool.objects.create(
        name=f"order_{uuid.uuid4().hex[:6]}",
        description="Place an order in the ERP.",
        kind="http",
        parameters={"type": "object", "properties": {"item": {"type": "string"}}},
        config={"method": "POST", "url": crm.url("/orders"), "allow_networks": ["127.0.0.1/32"]},
        enabled=True,
        approval="never",
    )


@pytest.fixture
def agent(server, tool):
    route = ModelRoute.objects.create(
        name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0, timeout_seconds=30
    )
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    agent = Agent.objects.create(name="Buyer", slug=f"b-{uuid.uuid4().hex[:6]}", route=route)
    agent.tools.set([tool])
    return agent


@pytest.fixture
def member(agent):
    member = get_user_model().objects.create_user(f"mo-{uuid.uuid4().hex[:6]}")
    grant_agent(member, agent)
    return member


def start(agent, user, text="order a laptop") -> Run:
    conversation = Conversation.objects.create(owner=user, agent=agent)
    return run_start(agent=agent, conversation=conversation, actor=user, input=text)


def final(run, timeout=90) -> Run:
    return wait_for(run, lambda r: r.state in (RunState.SUCCEEDED, RunState.FAILED), timeout)


def wait_for(run, condition, timeout=60) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run.refresh_from_db()
        if condition(run):
            return run
        assert time.monotonic() < deadline, f"run {run.pk} still {run.state}"
        time.sleep(0.05)


def until(condition, timeout=30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.02)


def drop_other_connections() -> int:
    """What a PostgreSQL restart does to the worker: every other session is terminated."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return cursor.fetchone()[0]


def kinds(run) -> list[str]:
    return list(RunStep.objects.filter(run=run).order_by("index").values_list("kind", flat=True))


def events(run, action: str) -> int:
    return AuditEvent.objects.filter(run=str(run.pk), action=action).count()


def the_call(run, tool, crm) -> ToolInvocation:
    """The run's one ledger row, after checking the endpoint saw its key exactly once."""
    key = f"run:{run.pk}:step:0:call:0"
    assert [r.headers["idempotency-key"] for r in crm.requests] == [key]
    return ToolInvocation.objects.get(key=key, tool=tool.name)


def test_a_database_connection_dropped_during_an_http_call_loses_nothing(
    server, crm, tool, agent, member, start_worker
):
    start_worker()
    crm.answer("/orders", Answer(body={"order": 7}, delay=1.5))
    server.script("primary", Reply.call(tool.name, {"item": "laptop"}), Reply.say("Ordered."))

    run = start(agent, member)
    until(lambda: crm.requests)  # the endpoint holds the call
    assert drop_other_connections() >= 1
    run = final(run)

    assert (run.state, run.answer, run.error) == (RunState.SUCCEEDED, "Ordered.", "")
    row = the_call(run, tool, crm)
    assert (row.status, row.attempts, row.fence, row.result) == ("succeeded", 1, 1, {"order": 7})
    assert events(run, "tool.invoked") == 1
    assert kinds(run) == ["model", "tool", "model"]
    assert server.count("primary") == 2
    assert run.fencing_token == 1  # the same worker carried on


def test_a_database_connection_dropped_during_a_model_call_does_not_ask_the_model_again(
    server, agent, member, start_worker
):
    start_worker()
    server.script("primary", Reply.say("Hello.", delay=1.5))

    run = start(agent, member)
    until(lambda: server.count("primary") == 1)  # the model is answering
    assert drop_other_connections() >= 1
    run = final(run)

    assert (run.state, run.answer) == (RunState.SUCCEEDED, "Hello.")
    assert server.count("primary") == 1  # the reply obtained before the fault was kept
    assert kinds(run) == ["model"]
    assert events(run, "run.step.model") == 1
    assert run.fencing_token == 1


@pytest.mark.parametrize("point", ["before_checkpoint", "after_tool_effect"])
def test_a_database_connection_dropped_at_a_checkpoint_repeats_nothing(
    server, crm, tool, agent, member, start_worker, tmp_path, point
):
    """before_checkpoint: the model step's commit fails (the first checkpoint of the run);
    after_tool_effect: the tool step's, after the call was made and recorded."""
    start_worker(
        WARDEN_FAILPOINT=point,
        WARDEN_FAILPOINT_ACTION="disconnect",
        WARDEN_FAILPOINT_ONCE=str(tmp_path / "hit"),
    )
    crm.answer("/orders", Answer(body={"order": 8}))
    server.script("primary", Reply.call(tool.name, {"item": "mouse"}), Reply.say("Ordered."))

    run = final(start(agent, member))

    assert (tmp_path / "hit").exists()  # the fault did happen
    assert (run.state, run.answer) == (RunState.SUCCEEDED, "Ordered."), run.error
    row = the_call(run, tool, crm)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert server.count("primary") == 2
    assert kinds(run) == ["model", "tool", "model"]
    assert (events(run, "run.step.model"), events(run, "tool.invoked")) == (2, 1)


def test_a_database_connection_dropped_as_the_task_starts_retries_the_task(
    server, agent, member, start_worker, tmp_path
):
    start_worker(
        WARDEN_FAILPOINT="before_lease",
        WARDEN_FAILPOINT_ACTION="disconnect",
        WARDEN_FAILPOINT_ONCE=str(tmp_path / "hit"),
    )
    server.script("primary", Reply.say("Hello."))

    run = final(start(agent, member))

    assert (tmp_path / "hit").exists()
    assert (run.state, run.answer, run.fencing_token) == (RunState.SUCCEEDED, "Hello.", 1)


def test_the_heartbeat_renews_the_lease_and_finds_it_taken_over(agent, member, settings):
    settings.WARDEN_RUN_LEASE_SECONDS = 2
    settings.WARDEN_RUN_HEARTBEAT_SECONDS = 0.2
    conversation = Conversation.objects.create(owner=member, agent=agent)
    run = Run.objects.create(agent=agent, conversation=conversation, actor=member, input="hi")
    token = run_acquire_lease(run_id=run.pk, holder="me")
    granted = Run.objects.get(pk=run.pk).lease_expires_at

    with lease_heartbeat(run_id=run.pk, token=token) as lease:
        until(lambda: Run.objects.get(pk=run.pk).lease_expires_at > granted)
        assert not lease.lost.is_set()
        # Another worker took the run over (as after an expiry): the next beat finds out.
        Run.objects.filter(pk=run.pk).update(fencing_token=token + 1)
        assert lease.lost.wait(10)
        renewed = Run.objects.get(pk=run.pk).lease_expires_at
    time.sleep(0.5)  # beats that would have come: none does, for a lease given back
    assert Run.objects.get(pk=run.pk).lease_expires_at == renewed


def test_a_dead_worker_groups_leases_are_released_and_no_one_elses(agent, member):
    conversation = Conversation.objects.create(owner=member, agent=agent)

    def held_by(holder: str) -> Run:
        run = Run.objects.create(agent=agent, conversation=conversation, actor=member, input="hi")
        assert run_acquire_lease(run_id=run.pk, holder=holder) == 1
        return run

    dead = held_by("box-1:4243:4242:task-a")
    live = held_by("box-1:5001:5000:task-b")
    elsewhere = held_by("box-2:4243:4242:task-c")  # the same group id on another machine

    assert runs_release_worker(host="box-1", group=4242) == [dead.pk]

    assert run_acquire_lease(run_id=dead.pk, holder="box-1:6001:6000:task-d") == 2
    assert run_acquire_lease(run_id=live.pk, holder="box-1:6001:6000:task-e") is None
    assert run_acquire_lease(run_id=elsewhere.pk, holder="box-1:6001:6000:task-f") is None


def test_a_tool_call_longer_than_the_lease_keeps_it(server, crm, tool, agent, member, start_worker):
    """The lease is 3 s, the call 6 s: the heartbeat renews it, so the resume job (played by
    the test, every 0.2 s) finds nothing to resume and the second worker never takes over."""
    lease = {"WARDEN_RUN_LEASE_SECONDS": "3"}
    start_worker(**lease)
    start_worker(**lease)
    crm.answer("/orders", Answer(body={"order": 9}, delay=6))
    server.script("primary", Reply.call(tool.name, {"item": "desk"}), Reply.say("Ordered."))

    run = start(agent, member)
    until(lambda: crm.requests)
    run_execute_task.delay(run.pk)  # a duplicate message, as a redelivery would make
    resumed = []
    while Run.objects.get(pk=run.pk).state == RunState.RUNNING:
        resumed += runs_to_resume()
        for run_id in resumed:
            run_execute_task.delay(run_id)
        time.sleep(0.2)
    run = final(run)

    assert resumed == []
    assert run.state == RunState.SUCCEEDED, run.error
    assert run.fencing_token == 1  # one lease holder throughout
    row = the_call(run, tool, crm)
    assert (row.status, row.attempts, row.fence) == ("succeeded", 1, 1)


def test_a_database_that_stays_away_fails_the_run_naming_it(server, agent, member, start_worker):
    start_worker(
        WARDEN_FAILPOINT="before_checkpoint",
        WARDEN_FAILPOINT_ACTION="disconnect",
        WARDEN_FAILPOINT_ALWAYS="1",
        WARDEN_RUN_RETRY_ATTEMPTS="3",
        WARDEN_RUN_RETRY_BACKOFF_MS="50",
    )
    server.script("primary", Reply.say("Hello."))

    run = final(start(agent, member))

    assert run.state == RunState.FAILED
    assert run.error.startswith("the database was unreachable for 3 attempts over "), run.error
    assert kinds(run) == []
    assert server.count("primary") == 1  # retried from memory, never asked again
    assert events(run, "run.failed") == 1


def test_a_killed_workers_run_resumes_on_another_within_seconds(
    server, crm, tool, agent, member, start_worker, tmp_path
):
    """With the default lease and resume period and a real beat: how long from a worker's
    death (SIGKILL between a tool's effect and its checkpoint) until another worker resumes the
    run. Printed, not asserted (the design's figure: lease + resume period, under 15 s)."""
    doomed = start_worker(
        WARDEN_FAILPOINT="after_tool_effect", WARDEN_FAILPOINT_ONCE=str(tmp_path / "hit")
    )
    spare = start_worker()
    # The run must reach the doomed worker: which of two idle workers takes a message is a race
    # (each polls the queue), so the spare takes none until the doomed one has died.
    with app.connection_for_write() as own:
        stopped = app.control.cancel_consumer(
            "celery", destination=[spare.hostname], reply=True, timeout=10, connection=own
        )
    assert stopped, "the spare worker did not answer cancel_consumer"
    beat = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "beat"),
            *("--loglevel", "WARNING", "--schedule", str(tmp_path / "beat-schedule")),
        ],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "WARDEN_TEST_DATABASE": connection.settings_dict["NAME"],
        },
    )
    try:
        crm.answer("/orders", Answer(body={"order": 10}))
        server.script("primary", Reply.call(tool.name, {"item": "chair"}), Reply.say("Ordered."))
        run = start(agent, member)
        until(lambda: doomed.poll() is not None, timeout=60)
        died = time.monotonic()
        assert doomed.returncode == -signal.SIGKILL
        with app.connection_for_write() as own:
            resumed_consuming = app.control.add_consumer(
                "celery", destination=[spare.hostname], reply=True, timeout=10, connection=own
            )
        assert resumed_consuming, "the spare worker did not answer add_consumer"
        wait_for(run, lambda r: r.fencing_token >= 2, timeout=60)
        resumed = time.monotonic() - died
        run = final(run)
        print(f"\nrun {run.pk} resumed {resumed:.1f} s after its worker died")
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(20)

    assert run.state == RunState.SUCCEEDED, run.error
    assert run.fencing_token == 2
    row = the_call(run, tool, crm)  # the effect happened once; the resumed run reused it
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert kinds(run) == ["model", "tool", "model"]


def test_errors_are_classified_by_the_dependency_that_failed():
    import httpx
    import kombu.exceptions
    import litellm
    import psycopg
    import redis
    from django.db import OperationalError

    def wrapped(cause: Exception) -> ModelUnavailable:
        try:
            raise ModelUnavailable("route r: no deployment answered") from cause
        except ModelUnavailable as exc:
            return exc

    timeout = litellm.Timeout(message="slow", model="m", llm_provider="openai")
    refused = litellm.APIConnectionError(message="refused", model="m", llm_provider="openai")
    unauthorized = litellm.AuthenticationError(message="no", model="m", llm_provider="openai")
    assert transient(OperationalError("server closed the connection")) == "database"
    assert transient(psycopg.OperationalError("the connection is closed")) == "database"
    assert transient(redis.ConnectionError("refused")) == "redis"
    assert transient(kombu.exceptions.OperationalError("broker away")) == "broker"
    assert transient(wrapped(timeout)) == "model provider"
    assert transient(wrapped(refused)) == "model provider"
    assert transient(wrapped(httpx.ConnectError("refused"))) == "model provider"
    assert transient(wrapped(unauthorized)) is None  # misconfigured: permanent
    assert transient(ModelUnavailable("needs the environment variable X")) is None
    assert transient(KeyError("a bug")) is None
    assert transient(ValueError("a bug")) is None


def test_an_ingestion_whose_database_connection_drops_is_retried_and_completes(
    monkeypatch, tmp_path
):
    from agents.knowledge.services import document_add
    from agents.models import Chunk, DocumentStatus, KnowledgeBase
    from agents.tasks import knowledge_ingest_task
    from audit.services import SYSTEM

    owner = get_user_model().objects.create_user(f"kb-{uuid.uuid4().hex[:6]}")
    base = KnowledgeBase.objects.create(
        name="Policies", slug=f"p-{uuid.uuid4().hex[:6]}", owner=owner
    )
    document, _ = document_add(
        knowledge_base=base,
        actor=SYSTEM,
        name="leave.md",
        data=b"# Leave\n\nFull-time employees receive 25 days of paid annual leave.\n",
        enqueue=False,
    )
    # The server drops the connection once the text is embedded, before the chunks are written.
    monkeypatch.setenv("WARDEN_FAILPOINT", "ingest_before_chunks")
    monkeypatch.setenv("WARDEN_FAILPOINT_ACTION", "disconnect")
    monkeypatch.setenv("WARDEN_FAILPOINT_ONCE", str(tmp_path / "hit"))

    result = knowledge_ingest_task.apply(args=[document.pk])

    assert (tmp_path / "hit").exists()  # the fault happened
    assert result.get() == DocumentStatus.READY
    document.refresh_from_db()
    assert (document.status, document.error) == (DocumentStatus.READY, "")
    assert Chunk.objects.filter(document=document).count() == document.chunk_count > 0
    assert not AuditEvent.objects.filter(action="knowledge.document_failed").exists()
