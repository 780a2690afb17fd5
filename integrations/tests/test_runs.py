"""Runs through the API: started idempotently (per client), waited for, followed as
Server-Sent Events (resumable), cancelled; always the caller's own."""

import json
import threading
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient, Client
from oauth2_provider.models import Application

from agents.events import publish, stream_key
from agents.models import Conversation, Run, RunState
from agents.orchestrator import run_execute
from audit.models import AuditEvent
from governance.live import redis_client
from governance.models import ApprovalRequest, ApprovalStatus
from integrations.tests.conftest import application_for, token_of
from integrations.tokens import token_create
from tests.model_server import Reply
from tests.personas import parked

pytestmark = pytest.mark.django_db
ALL = ["agents:run", "runs:read"]


def pat(user, scopes=ALL) -> dict:
    _, secret = token_create(user=user, name="test", scopes=scopes, days=1)
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def app_token(client, user, scope="agents:run runs:read") -> dict:
    token = token_of(client, application_for(user), scope)
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def start(client, agent, auth, body=None, key=None, query=""):
    headers = {**auth, **({"HTTP_IDEMPOTENCY_KEY": key} if key else {})}
    return client.post(
        f"/api/v1/agents/{agent.slug}/runs{query}",
        json.dumps(body if body is not None else {"input": "Is the VPN down?"}),
        content_type="application/json",
        **headers,
    )


def test_a_run_is_queued_and_answered_202_with_its_urls(client, people, assistant):
    auth = pat(people.member)

    response = start(client, assistant, auth)

    assert response.status_code == 202
    body = response.json()
    run = Run.objects.get()
    assert body["id"] == run.pk
    assert body["state"] == "queued"
    assert body["url"] == f"/api/v1/runs/{run.pk}" == response["Location"]
    assert body["events_url"] == f"/api/v1/runs/{run.pk}/events"
    assert (run.actor, run.input, run.stream) == (people.member, "Is the VPN down?", True)
    assert run.conversation.title == "Is the VPN down?"
    assert AuditEvent.objects.filter(
        action="run.queued", run=str(run.pk), actor_id=str(people.member.pk)
    ).exists()
    assert client.get(body["url"], **auth).json()["state"] == "queued"


def test_the_same_key_and_body_answers_the_original_run(client, people, assistant):
    auth = pat(people.member)
    first = start(client, assistant, auth, key="order-1017")

    again = start(client, assistant, auth, key="order-1017")

    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Run.objects.count() == 1
    assert Conversation.objects.count() == 1  # the retry made no conversation either


def test_the_same_key_with_another_body_is_a_conflict(client, people, assistant):
    auth = pat(people.member)
    first = start(client, assistant, auth, key="order-1017")

    other = start(client, assistant, auth, {"input": "Something else"}, key="order-1017")

    assert other.status_code == 409
    assert other["Content-Type"] == "application/problem+json"
    problem = other.json()
    assert problem["type"] == "/api/problems/idempotency-conflict"
    assert problem["run"] == first.json()["url"]
    assert Run.objects.count() == 1
    assert Conversation.objects.count() == 1


def test_keys_belong_to_the_client(client, people, assistant):
    # Two applications on one service account, and the account's own token: three clients.
    crm, erp = app_token(client, people.integration), app_token(client, people.integration)
    own = pat(people.integration)

    ids = {start(client, assistant, auth, key="k-1").json()["id"] for auth in (crm, erp, own)}

    assert len(ids) == 3
    assert start(client, assistant, crm, key="k-1").json()["id"] in ids
    assert Run.objects.count() == 3
    # Each run knows the application that started it (its webhooks, and only its, hear of it).
    started_by = list(Run.objects.values_list("client_application_id", flat=True))
    applications = sorted(Application.objects.values_list("pk", flat=True))
    assert sorted(pk for pk in started_by if pk is not None) == applications
    assert started_by.count(None) == 1  # the personal token's


def test_concurrent_retries_with_one_key_start_one_run(committing_db, people, assistant):
    from django.db import connections

    auth = pat(people.member)
    barrier, answers = threading.Barrier(4), []

    def retry():
        barrier.wait()
        answers.append(start(Client(), assistant, auth, key="burst"))
        connections.close_all()

    threads = [threading.Thread(target=retry) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a.status_code for a in answers) == [202] * 4
    assert len({a.json()["id"] for a in answers}) == 1
    assert Run.objects.count() == 1
    assert Conversation.objects.count() == 1


@pytest.mark.parametrize("who", ["outsider", "denied"])
def test_an_agent_one_may_not_use_is_not_found_and_nothing_starts(client, people, governed, who):
    response = start(client, governed.agent, pat(people.named(who)))

    assert response.status_code == 404
    assert response.json()["type"] == "/api/problems/not-found"
    assert not Run.objects.exists()
    assert not Conversation.objects.exists()


def test_a_policy_refusal_says_why_with_its_reasons(client, people, assistant):
    assistant.enabled = False
    assistant.save()

    response = start(client, assistant, pat(people.member))

    assert response.status_code == 403
    problem = response.json()
    assert problem["type"] == "/api/problems/policy-denied"
    assert problem["reasons"] == ["agent.disabled"]
    assert problem["detail"] == "the agent Assistant is disabled"
    assert not Run.objects.exists()
    assert not Conversation.objects.exists()
    assert AuditEvent.objects.filter(action="policy.decided").exists()  # the refusal is audited


@pytest.mark.parametrize(
    ("body", "headers", "query", "field"),
    [
        ({}, {}, "", "input"),
        ({"input": "x" * 20_001}, {}, "", "input"),
        ({"input": "hi", "conversation": "seven"}, {}, "", "conversation"),
        ({"input": "hi"}, {"HTTP_IDEMPOTENCY_KEY": "has space"}, "", "Idempotency-Key"),
        ({"input": "hi"}, {}, "?wait=soon", "wait"),
        ({"input": "hi"}, {}, "?wait=61", "wait"),
    ],
)
def test_malformed_requests_are_problems_and_start_nothing(
    client, people, assistant, body, headers, query, field
):
    response = client.post(
        f"/api/v1/agents/{assistant.slug}/runs{query}",
        json.dumps(body),
        content_type="application/json",
        **pat(people.member),
        **headers,
    )

    assert response.status_code == 400
    assert response.json()["type"] == "/api/problems/invalid"
    assert field in response.json()["errors"]
    assert not Run.objects.exists()


def test_an_empty_message_is_refused_in_words(client, people, assistant):
    response = start(client, assistant, pat(people.member), {"input": "   "})

    assert response.status_code == 400
    assert response.json()["type"] == "/api/problems/run-refused"
    assert response.json()["detail"] == "the message is empty"
    assert not Conversation.objects.exists()


def test_continuing_a_conversation_only_ones_own(client, people, assistant, server):
    auth = pat(people.member)
    first = start(client, assistant, auth).json()
    conversation = first["conversation"]

    again = start(client, assistant, auth, {"input": "And now?", "conversation": conversation})
    theirs = start(
        client, assistant, pat(people.integration), {"input": "x", "conversation": conversation}
    )

    assert again.status_code == 202
    assert again.json()["conversation"] == conversation
    assert theirs.status_code == 404
    assert Run.objects.filter(conversation=conversation).count() == 2


def test_wait_answers_a_finished_run_with_its_answer(
    committing_db, start_worker, client, people, assistant, server
):
    server.script("primary", Reply.say("The VPN is up."))
    start_worker()

    # The longest wait the API allows: the worker's first model call imports litellm, which
    # on busy cores takes a good part of a minute.
    response = start(client, assistant, pat(people.member), query="?wait=60")

    assert response.status_code == 200
    assert (response.json()["state"], response.json()["answer"]) == ("succeeded", "The VPN is up.")


def test_wait_returns_at_once_when_the_run_parks_for_approval(
    committing_db, start_worker, client, people, help_desk, server
):
    server.script("primary", Reply.call("create_ticket", {"title": "VPN down"}))
    start_worker()

    began = time.monotonic()
    response = start(client, help_desk, pat(people.member), query="?wait=60")

    assert response.status_code == 202
    assert response.json()["state"] == "awaiting_approval"
    assert time.monotonic() - began < 50  # it did not sit out the whole wait


def test_wait_gives_up_after_n_seconds_with_the_run_still_queued(client, people, assistant):
    began = time.monotonic()
    response = start(client, assistant, pat(people.member), query="?wait=1")

    assert response.status_code == 202
    assert response.json()["state"] == "queued"
    assert time.monotonic() - began >= 1


def _events(response) -> list[dict]:
    async def read() -> bytes:  # the stream is asynchronous: served by an ASGI server
        return b"".join([chunk async for chunk in response.streaming_content])

    text = async_to_sync(read)().decode()
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append({"id": fields.get("id"), **json.loads(fields["data"])})
    return events


def _logged(run_id: int, until: str = "final", timeout: float = 10) -> None:
    async def look():
        redis = redis_client()
        try:
            return [json.loads(f[b"e"])["type"] for _, f in await redis.xrange(stream_key(run_id))]
        finally:
            await redis.aclose()

    deadline = time.monotonic() + timeout
    while until not in async_to_sync(look)():
        assert time.monotonic() < deadline, "the run's events were not logged in time"
        time.sleep(0.05)


def test_the_events_of_a_run_and_resuming_after_one(client, people, assistant, server):
    server.script("primary", Reply.say("The VPN is up again."))
    auth = pat(people.member)
    run_id = start(client, assistant, auth).json()["id"]
    run_execute(run_id=run_id, holder="test")
    _logged(run_id)

    response = client.get(f"/api/v1/runs/{run_id}/events", **auth)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = _events(response)
    assert events[-1]["type"] == "final"
    assert events[-1]["state"] == "succeeded"
    text = "".join(e["text"] for e in events if e["type"] == "token")
    assert text == "The VPN is up again."
    ids = [e["id"] for e in events]
    assert all(ids)
    assert len(set(ids)) == len(ids)
    # A client that saw the first two events reconnects: it gets exactly the rest.
    resumed = _events(
        client.get(f"/api/v1/runs/{run_id}/events", HTTP_LAST_EVENT_ID=ids[1], **auth)
    )
    assert resumed == events[2:]


def test_events_arrive_as_they_happen(committing_db, people, assistant):
    auth = pat(people.member)
    run = Run.objects.get(pk=start(Client(), assistant, auth).json()["id"])

    async def follow():
        response = await AsyncClient().get(
            f"/api/v1/runs/{run.pk}/events", headers={"Authorization": auth["HTTP_AUTHORIZATION"]}
        )
        seen = []
        async for chunk in response.streaming_content:
            seen.append(chunk.decode())
            if len(seen) == 1:  # subscribed (the retry hint): now the run speaks
                publish(run.pk, {"type": "token", "step": 1, "attempt": 1, "text": "Hello"})
                publish(run.pk, {"type": "final", "state": "succeeded"})
        return "".join(seen)

    text = async_to_sync(follow)()

    assert '"text": "Hello"' in text
    assert text.rstrip().endswith('{"type": "final", "state": "succeeded"}')


def test_a_run_that_did_not_stream_logs_only_what_settles_it(client, people, assistant, server):
    server.script("primary", Reply.say("Quietly."))
    auth = pat(people.member)
    run_id = start(client, assistant, auth).json()["id"]
    Run.objects.filter(pk=run_id).update(stream=False)
    run_execute(run_id=run_id, holder="test")
    _logged(run_id)

    events = _events(client.get(f"/api/v1/runs/{run_id}/events", **auth))

    assert [(e["type"], e.get("state")) for e in events] == [("final", "succeeded")]
    assert events[0]["id"] is not None  # logged: no tokens, no steps, but its end


def _forget(run_id: int) -> None:
    """Redis loses the run's log (restarted without it, or a day passed)."""

    async def forget():
        redis = redis_client()
        try:
            await redis.delete(stream_key(run_id))
        finally:
            await redis.aclose()

    async_to_sync(forget)()


def test_a_run_whose_log_was_lost_is_rebuilt_from_its_steps(
    client, people, help_desk, server, django_capture_on_commit_callbacks
):
    """Parked on an approval, approved, resumed, answered: every event but the tokens comes
    back from the database as it was published, ending with the final state."""
    from governance.approvals import approval_decide
    from tests.personas import resume

    auth = pat(people.member)
    run = parked(server, help_desk, people.member)
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    with django_capture_on_commit_callbacks(execute=True):  # its `requeued` event
        approval_decide(approval_id=approval.pk, decided_by=people.reviewer, approve=True)
    assert resume(run).state == RunState.SUCCEEDED
    _logged(run.pk)
    logged = _events(client.get(f"/api/v1/runs/{run.pk}/events", **auth))
    _forget(run.pk)

    rebuilt = _events(client.get(f"/api/v1/runs/{run.pk}/events", **auth))

    published = [{k: v for k, v in e.items() if k != "id"} for e in logged]
    assert [e["type"] for e in published] == [
        *("step", "step", "requeued", "step"),
        *("token",) * 4,
        *("step", "final"),
    ]
    assert [{k: v for k, v in e.items() if k != "id"} for e in rebuilt] == [
        e for e in published if e["type"] != "token"
    ]
    assert [e["id"] for e in rebuilt] == [f"0-{n}" for n in range(1, 7)]
    assert rebuilt[-1] == {"id": "0-6", "type": "final", "state": "succeeded"}
    # A client that saw the first two resumes after them.
    resumed = _events(client.get(f"/api/v1/runs/{run.pk}/events", HTTP_LAST_EVENT_ID="0-2", **auth))
    assert resumed == rebuilt[2:]


def test_events_of_someone_elses_run_are_not_found(client, people, assistant):
    run_id = start(client, assistant, pat(people.member)).json()["id"]

    response = client.get(f"/api/v1/runs/{run_id}/events", **pat(people.integration))
    bad_id = client.get(
        f"/api/v1/runs/{run_id}/events", HTTP_LAST_EVENT_ID="yesterday", **pat(people.member)
    )

    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert bad_id.status_code == 400


def test_cancelling_a_queued_run(client, people, assistant):
    auth = pat(people.member)
    run_id = start(client, assistant, auth).json()["id"]

    response = client.post(f"/api/v1/runs/{run_id}/cancel", **auth)

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert Run.objects.get(pk=run_id).state == RunState.CANCELLED
    assert AuditEvent.objects.filter(action="run.cancel_requested", run=str(run_id)).exists()


def test_cancelling_a_parked_run_withdraws_its_approval(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)

    response = client.post(f"/api/v1/runs/{run.pk}/cancel", **pat(people.member))

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert ApprovalRequest.objects.get(run_id=run.pk).status == ApprovalStatus.WITHDRAWN


def test_one_cannot_cancel_someone_elses_run(client, people, assistant):
    run_id = start(client, assistant, pat(people.member)).json()["id"]

    response = client.post(f"/api/v1/runs/{run_id}/cancel", **pat(people.integration))

    assert response.status_code == 404
    run = Run.objects.get(pk=run_id)
    assert (run.state, run.cancel_requested) == (RunState.QUEUED, False)
    assert not AuditEvent.objects.filter(action="run.cancel_requested").exists()


def test_cancel_needs_the_run_scope_not_just_reading(client, people, assistant):
    run_id = start(client, assistant, pat(people.member)).json()["id"]

    response = client.post(f"/api/v1/runs/{run_id}/cancel", **pat(people.member, ["runs:read"]))

    assert response.status_code == 403
    assert Run.objects.get(pk=run_id).state == RunState.QUEUED


async def _pump(response, chunks) -> None:
    async for chunk in response.streaming_content:
        await chunks.put(chunk.decode())
    await chunks.put(None)


async def _until(chunks, text: str, timeout: float = 30) -> list[str]:
    """The stream's chunks up to the first that holds `text` (it must not end before)."""
    import asyncio

    seen: list[str] = []
    while True:
        chunk = await asyncio.wait_for(chunks.get(), timeout)
        assert chunk is not None, f"the stream ended before {text!r}: {seen}"
        seen.append(chunk)
        if text in chunk:
            return seen


def _following(run_id: int, auth: dict, after: str | None = None):
    """An event stream of the run, read chunk by chunk into a queue by a task."""
    import asyncio

    async def follow():
        headers = {"Authorization": auth["HTTP_AUTHORIZATION"]}
        if after:
            headers["Last-Event-ID"] = after
        response = await AsyncClient().get(f"/api/v1/runs/{run_id}/events", headers=headers)
        assert response.status_code == 200
        chunks = asyncio.Queue()
        return chunks, asyncio.ensure_future(_pump(response, chunks))

    return follow


def test_a_stream_started_on_a_queued_run_gets_the_steps_that_follow(
    committing_db, start_worker, people, assistant, server
):
    server.script("primary", Reply.say("Queued, then answered."))
    auth = pat(people.member)
    run_id = start(Client(), assistant, auth).json()["id"]
    assert Run.objects.get(pk=run_id).state == RunState.QUEUED  # no worker has taken it

    async def scenario():
        chunks, reader = await _following(run_id, auth)()
        assert (await _until(chunks, "retry:"))[0].startswith("retry:")
        await sync_to_async(start_worker, thread_sensitive=False)()  # the stream reads on
        seen = await _until(chunks, '"type": "final"', timeout=60)
        await reader
        return "".join(seen)

    text = async_to_sync(scenario)()

    assert "event: step" in text
    assert text.count('"type": "token"') >= 1
    assert text.rstrip().endswith('{"type": "final", "state": "succeeded"}')


def test_a_stream_whose_redis_connection_is_killed_goes_on(committing_db, people, assistant):
    """CLIENT KILL drops every connection of this test session's Redis (the stream's, the
    publisher's, the channel layer's): the stream reads on from the last id it sent."""
    import redis
    from django.conf import settings

    auth = pat(people.member)
    run = Run.objects.get(pk=start(Client(), assistant, auth).json()["id"])

    async def scenario():
        chunks, reader = await _following(run.pk, auth)()
        await _until(chunks, "retry:")
        publish(run.pk, {"type": "token", "step": 1, "attempt": 1, "text": "before"})
        await _until(chunks, '"before"')
        killed = redis.Redis.from_url(settings.REDIS_URL).client_kill_filter(_type="normal")
        publish(run.pk, {"type": "token", "step": 1, "attempt": 1, "text": "after"})
        publish(run.pk, {"type": "final", "state": "succeeded"})
        seen = await _until(chunks, '"type": "final"')
        assert await chunks.get() is None
        await reader
        return killed, "".join(seen)

    killed, text = async_to_sync(scenario)()

    assert killed >= 1  # the stream's own connection among them
    assert '"text": "after"' in text
    assert "event: error" not in text
    assert '"text": "before"' not in text  # nothing sent twice


def test_a_stream_whose_redis_stays_away_ends_with_an_error_event_then_resumes(
    committing_db, people, assistant, settings, monkeypatch
):
    """A Redis of its own, stopped for good mid-stream: the stream says so in an `error`
    event (never a bare end); resumed once Redis is back (empty: it lost the log), it ends
    with the run's final state from the database."""
    import shutil

    import redis
    import redis.asyncio

    from integrations.api import runs
    from tests.processes import redis_of_its_own

    own = redis_of_its_own()
    own_url = f"unix://{own.paths.redis_socket}"
    monkeypatch.setattr(runs, "REDIS_OUTAGE_SECONDS", 2)
    # Only the stream reads the Redis of its own (REDIS_URL stays: the process's publisher
    # and channel layer keep the session's Redis).
    monkeypatch.setattr(
        runs,
        "redis_client",
        lambda: redis.asyncio.from_url(own_url, **settings.REDIS_BLOCKING_OPTIONS),
    )
    auth = pat(people.member)
    run = Run.objects.get(pk=start(Client(), assistant, auth).json()["id"])
    own.start()
    try:
        logged = redis.Redis.from_url(own_url).xadd(
            stream_key(run.pk),
            {"e": json.dumps({"type": "token", "step": 1, "attempt": 1, "text": "one"})},
        )

        async def scenario():
            chunks, reader = await _following(run.pk, auth)()
            await _until(chunks, '"one"')
            await sync_to_async(own.stop)()
            seen = await _until(chunks, "event: error")
            assert await chunks.get() is None  # and then it ends
            await reader
            return "".join(seen)

        text = async_to_sync(scenario)()
        assert '"reason": "events_unavailable"' in text
        Run.objects.filter(pk=run.pk).update(state=RunState.SUCCEEDED)  # while nobody listened
        own.start()  # back, without the log
        resumed = _events(
            Client().get(
                f"/api/v1/runs/{run.pk}/events", HTTP_LAST_EVENT_ID=logged.decode(), **auth
            )
        )
    finally:
        own.stop()
        shutil.rmtree(own.paths.var_dir, ignore_errors=True)

    assert resumed == [{"id": None, "type": "final", "state": "succeeded"}]
