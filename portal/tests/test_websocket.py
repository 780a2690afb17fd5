"""The browser's websocket (agents.consumers) on the real channel layer (the embedded Redis):
session authentication, access per subscription, malformed and too many frames, and a run's
events exactly once across a late subscription."""

import json
import threading
import time
import uuid
from importlib import import_module

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import Group

from agents.events import publish
from agents.models import Agent, Conversation, Deployment, ModelRoute, Run
from config.asgi import application
from governance import roles

pytestmark = pytest.mark.usefixtures("committing_db")  # the consumer reads on its own thread


@pytest.fixture
def agent():
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    return Agent.objects.create(name="A", slug=f"a-{uuid.uuid4().hex[:6]}", route=route)


@pytest.fixture
def mia():
    return get_user_model().objects.create_user("mia")


@pytest.fixture
def oscar():
    return get_user_model().objects.create_user("oscar")


def a_run(owner, agent) -> Run:
    conversation = Conversation.objects.create(owner=owner, agent=agent)
    return Run.objects.create(agent=agent, conversation=conversation, actor=owner, input="hi")


def cookie(user) -> tuple[bytes, bytes]:
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode())


def socket(user=None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if user is not None:
        headers.append(cookie(user))
    return WebsocketCommunicator(application, "/ws/", headers=headers)


async def opened(user) -> WebsocketCommunicator:
    communicator = await sync_to_async(socket)(user)  # the session is saved on this thread
    connected, _ = await communicator.connect(timeout=5)  # 1 s by default: short on busy cores
    assert connected
    return communicator


async def closed_with(communicator) -> int:
    output = await communicator.receive_output(timeout=5)
    assert output["type"] == "websocket.close", output
    return output["code"]


def wait_logged(run_id: int, count: int) -> None:
    """The publisher thread logs asynchronously: wait until `count` events are in the log."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + 5
    while client.xlen(f"warden:run:{run_id}:events") < count:
        assert time.monotonic() < deadline, "the events were not logged"
        time.sleep(0.01)


def test_a_connection_without_a_session_is_closed_with_4401():
    async def scenario():
        communicator = socket()
        await communicator.connect()
        assert await closed_with(communicator) == 4401

    async_to_sync(scenario)()


def test_a_late_subscriber_gets_every_event_once_in_order(mia, agent):
    """Tokens are published before, during and after the subscription: the replay and the
    live events together are the whole text, nothing twice."""
    run = a_run(mia, agent)
    words = [f"w{i} " for i in range(300)]
    for word in words[:100]:
        publish(run.pk, {"type": "token", "step": 0, "text": word})
    wait_logged(run.pk, 100)

    def more() -> None:
        for word in words[100:]:
            publish(run.pk, {"type": "token", "step": 0, "text": word})
            time.sleep(0.001)
        publish(run.pk, {"type": "final", "state": "succeeded"})

    async def scenario():
        communicator = await opened(mia)
        threading.Thread(target=more).start()  # racing the subscription
        await communicator.send_json_to({"type": "subscribe", "run": run.pk})
        replay = await communicator.receive_json_from(timeout=5)
        assert replay["type"] == "replay"
        assert replay["run"] == run.pk
        events = [item["event"] for item in replay["events"]]
        ids = [item["id"] for item in replay["events"]]
        while not events or events[-1]["type"] != "final":
            frame = await communicator.receive_json_from(timeout=5)
            assert frame["type"] == "event"
            events.append(frame["event"])
            ids.append(frame["id"])
        await communicator.disconnect()
        return events, ids

    events, ids = async_to_sync(scenario)()

    assert "".join(e["text"] for e in events if e["type"] == "token") == "".join(words)
    assert len(ids) == len(set(ids)) == 301
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_someone_elses_run_or_conversation_closes_the_socket_with_4403(mia, oscar, agent):
    theirs = a_run(oscar, agent)

    async def scenario(frame):
        communicator = await opened(mia)
        await communicator.send_json_to(frame)
        code = await closed_with(communicator)
        return code

    assert async_to_sync(scenario)({"type": "subscribe", "run": theirs.pk}) == 4403
    assert (
        async_to_sync(scenario)({"type": "subscribe", "conversation": theirs.conversation_id})
        == 4403
    )
    # A missing one looks the same.
    assert async_to_sync(scenario)({"type": "subscribe", "run": theirs.pk + 1000}) == 4403


def members(group: str) -> int:
    """How many channels are in a channel-layer group (channels_redis keeps a sorted set)."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    return client.zcard(f"warden:channels:group:{group}")


def test_a_refused_subscriber_never_joins_the_runs_group(mia, oscar, agent):
    theirs = a_run(oscar, agent)

    async def scenario():
        communicator = await opened(mia)
        await communicator.send_json_to({"type": "subscribe", "run": theirs.pk})
        return await closed_with(communicator)

    assert async_to_sync(scenario)() == 4403
    assert members(f"run.{theirs.pk}") == 0
    mine = a_run(mia, agent)

    async def allowed():
        communicator = await opened(mia)
        await communicator.send_json_to({"type": "subscribe", "run": mine.pk})
        await communicator.receive_json_from(timeout=5)
        joined = members(f"run.{mine.pk}")
        await communicator.disconnect()
        return joined

    assert async_to_sync(allowed)() == 1  # the count above can tell


def test_an_event_both_replayed_and_live_is_sent_once(mia, agent, monkeypatch):
    """Forced overlap: an event is logged after the join and before the replay is read, so
    it is in the replay and also arrives live; one published after the replay arrives live."""
    from agents import events

    run = a_run(mia, agent)
    real_replay = events.replay

    async def replay_after_an_event(redis, run_id):
        publish(run_id, {"type": "token", "step": 0, "text": "both "})
        await sync_to_async(wait_logged)(run_id, 1)
        return await real_replay(redis, run_id)

    monkeypatch.setattr(events, "replay", replay_after_an_event)

    async def scenario():
        communicator = await opened(mia)
        await communicator.send_json_to({"type": "subscribe", "run": run.pk})
        replayed = await communicator.receive_json_from(timeout=5)
        publish(run.pk, {"type": "token", "step": 0, "text": "after"})
        live = await communicator.receive_json_from(timeout=5)
        nothing_more = await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return replayed, live, nothing_more

    replayed, live, nothing_more = async_to_sync(scenario)()
    assert [e["event"]["text"] for e in replayed["events"]] == ["both "]
    assert live["event"]["text"] == "after"
    assert nothing_more  # "both " did not come a second time


def test_live_events_are_not_dropped_when_publishers_send_out_of_order(mia, agent):
    """Two processes publish for one run (a worker, the web process deciding an approval):
    an event whose id is older than one already sent live was still not in the replay."""
    from channels.layers import get_channel_layer

    run = a_run(mia, agent)

    async def scenario():
        communicator = await opened(mia)
        await communicator.send_json_to({"type": "subscribe", "run": run.pk})
        replay = await communicator.receive_json_from(timeout=5)
        layer = get_channel_layer()
        for sid in ("9000000000001-0", "9000000000000-5"):  # sent newest first
            await layer.group_send(
                f"run.{run.pk}",
                {"type": "run.event", "run": run.pk, "id": sid, "event": {"type": "x"}},
            )
        ids = [(await communicator.receive_json_from(timeout=5))["id"] for _ in range(2)]
        await communicator.disconnect()
        return replay, ids

    replay, ids = async_to_sync(scenario)()
    assert replay["events"] == []
    assert ids == ["9000000000001-0", "9000000000000-5"]


def test_a_conversation_subscription_follows_its_runs_in_progress_and_new_ones(mia, agent):
    first = a_run(mia, agent)
    done = Run.objects.create(
        agent=agent, conversation=first.conversation, actor=mia, input="old", state="succeeded"
    )

    async def scenario():
        communicator = await opened(mia)
        await communicator.send_json_to(
            {"type": "subscribe", "conversation": first.conversation_id}
        )
        subscribed = await communicator.receive_json_from(timeout=5)
        replay = await communicator.receive_json_from(timeout=5)
        assert replay["run"] == first.pk  # the finished run is not followed
        from agents.events import publish_group

        publish_group(
            f"conversation.{first.conversation_id}", {"type": "run.started", "run": 999_999}
        )
        started = await communicator.receive_json_from(timeout=5)
        followed = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return subscribed, started, followed

    subscribed, started, followed = async_to_sync(scenario)()
    assert subscribed["runs"] == [first.pk, done.pk]  # all listed, the page fetches what it lacks
    assert started == {"type": "run.started", "run": 999_999}
    assert followed["type"] == "replay"
    assert followed["run"] == 999_999


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        ("not json", "the message is not JSON"),
        ("[1, 2]", 'expected {"type": "subscribe", ...} or {"type": "ping"}'),
        ('{"type": "shout"}', 'expected {"type": "subscribe", ...} or {"type": "ping"}'),
        ('{"type": "subscribe"}', "subscribe to a run, a conversation (by id) or the inbox"),
        ('{"type": "subscribe", "run": "7"}', "subscribe to a run, a conversation (by id)"),
        ('{"type": "ping", "pad": "' + "x" * 5000 + '"}', "send JSON text frames of at most"),
        ("[" * 2000 + "]" * 2000, "the message is not JSON"),  # nested past the parser
    ],
)
def test_a_malformed_frame_gets_an_error_event_and_the_socket_stays_open(mia, frame, detail):
    async def scenario():
        communicator = await opened(mia)
        await communicator.send_to(text_data=frame)
        error = await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to({"type": "ping"})
        pong = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return error, pong

    error, pong = async_to_sync(scenario)()
    assert error["type"] == "error"
    assert error["detail"].startswith(detail)
    assert pong == {"type": "pong"}


def test_a_binary_frame_gets_an_error_event(mia):
    async def scenario():
        communicator = await opened(mia)
        await communicator.send_to(bytes_data=b"\x00\x01")
        error = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return error

    assert async_to_sync(scenario)()["type"] == "error"


def test_a_flood_is_told_to_slow_down_then_closed_with_4429(mia):
    from agents.consumers import BURST, STRIKES

    async def scenario():
        communicator = await opened(mia)
        for _ in range(int(BURST) + STRIKES + 5):
            await communicator.send_json_to({"type": "ping"})
        answers = []
        while True:
            output = await communicator.receive_output(timeout=5)
            if output["type"] == "websocket.close":
                return answers, output["code"]
            answers.append(json.loads(output["text"]))

    answers, code = async_to_sync(scenario)()
    assert code == 4429
    assert answers[0] == {"type": "pong"}
    assert {"type": "error", "detail": "too many messages: at most 5 a second"} in answers
    assert sum(1 for a in answers if a["type"] == "pong") <= BURST + 1


def test_a_socket_whose_session_ended_subscribes_to_nothing_more(mia, agent):
    from django.contrib.sessions.models import Session

    mine = a_run(mia, agent)

    async def scenario():
        communicator = await opened(mia)
        await sync_to_async(Session.objects.all().delete)()  # signed out in another tab
        await communicator.send_json_to({"type": "subscribe", "run": mine.pk})
        return await closed_with(communicator)

    assert async_to_sync(scenario)() == 4401
    assert members(f"run.{mine.pk}") == 0


def test_the_inbox_is_for_reviewers(mia):
    reviewer = get_user_model().objects.create_user("rey")
    reviewer.groups.add(Group.objects.get_or_create(name=roles.REVIEWER)[0])

    async def scenario(user):
        communicator = await opened(user)
        await communicator.send_json_to({"type": "subscribe", "inbox": True})
        output = await communicator.receive_output(timeout=5)
        await communicator.disconnect()
        return output

    refused = async_to_sync(scenario)(mia)
    assert refused == {"type": "websocket.close", "code": 4403}
    accepted = async_to_sync(scenario)(reviewer)
    assert json.loads(accepted["text"]) == {"type": "subscribed", "inbox": True}


def test_a_reviewer_hears_of_a_new_request(agent, mia):
    from governance.notify import reviewers_notify

    reviewer = get_user_model().objects.create_user("rey")
    reviewer.groups.add(Group.objects.get_or_create(name=roles.REVIEWER)[0])

    async def scenario():
        communicator = await opened(reviewer)
        await communicator.send_json_to({"type": "subscribe", "inbox": True})
        await communicator.receive_json_from(timeout=5)
        await sync_to_async(reviewers_notify)([], {"type": "approval.requested", "approval": 1})
        frame = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return frame

    frame = async_to_sync(scenario)()
    assert frame == {"type": "inbox", "event": {"type": "approval.requested", "approval": 1}}


def test_a_reviewer_hears_of_a_decision_taken_elsewhere(mia, agent):
    """Two reviewers' inboxes are open; one decides, the other's inbox is told to reload."""
    from django.db import transaction

    from governance.approvals import approval_decide, approval_request_create
    from tools.models import Tool

    run = a_run(mia, agent)
    reviewers = Group.objects.get_or_create(name=roles.REVIEWER)[0]
    ann, bob = (get_user_model().objects.create_user(name) for name in ("ann", "bob"))
    for person in (ann, bob):
        person.groups.add(reviewers)
    with transaction.atomic():
        request = approval_request_create(
            key="k1",
            run_id=run.pk,
            agent=agent,
            tool=Tool.objects.get(name="create_ticket"),
            requested_by=mia,
            arguments={"title": "x"},
            reasons=["tool.risk_write"],
        )

    async def scenario():
        communicator = await opened(bob)
        await communicator.send_json_to({"type": "subscribe", "inbox": True})
        await communicator.receive_json_from(timeout=5)
        await sync_to_async(approval_decide)(approval_id=request.pk, decided_by=ann, approve=True)
        frame = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return frame

    frame = async_to_sync(scenario)()
    assert frame == {
        "type": "inbox",
        "event": {
            "type": "approval.decided",
            "approval": request.pk,
            "run": run.pk,
            "status": "approved",
        },
    }


def test_a_replay_whose_log_redis_lost_is_rebuilt_from_the_database(mia, agent):
    """No log at all (Redis restarted without it): the replay is the run's committed steps
    and its end, as the worker published them, then live events follow."""
    from django.utils import timezone

    from agents.models import RunStep

    run = a_run(mia, agent)
    now = timezone.now()
    for index, kind, output in [
        (0, "retrieval", {"passages": [{"document": 1}, {"document": 2}]}),
        (1, "model", {"content": "", "tool_calls": [{"id": "c", "name": "lookup"}]}),
    ]:
        RunStep.objects.create(
            run=run, index=index, kind=kind, output=output, started_at=now, finished_at=now
        )
    Run.objects.filter(pk=run.pk).update(state="running")

    async def scenario():
        communicator = await opened(mia)
        await communicator.send_json_to({"type": "subscribe", "run": run.pk})
        replay = await communicator.receive_json_from(timeout=5)
        publish(run.pk, {"type": "token", "step": 2, "text": "live"})
        live = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return replay, live

    replay, live = async_to_sync(scenario)()
    assert replay["events"] == [
        {"id": "0-1", "event": {"type": "step", "index": 0, "kind": "retrieval", "found": 2}},
        {"id": "0-2", "event": {"type": "step", "index": 1, "kind": "model", "calls": ["lookup"]}},
    ]
    assert live["type"] == "event"
    assert live["event"]["text"] == "live"


def test_a_log_that_lost_its_beginning_is_completed_from_the_database(mia, agent):
    """Redis restarted mid-run: the log holds only what came after (step 2's tokens and
    step). The replay puts the committed steps it lost before them, nothing twice."""
    from django.utils import timezone

    from agents.models import RunStep

    run = a_run(mia, agent)
    now = timezone.now()
    for index, kind, output in [
        (0, "retrieval", {"passages": []}),
        (1, "model", {"content": "", "tool_calls": [{"id": "c", "name": "lookup"}]}),
        (2, "model", {"content": "Done.", "tool_calls": []}),
    ]:
        RunStep.objects.create(
            run=run, index=index, kind=kind, output=output, started_at=now, finished_at=now
        )
    Run.objects.filter(pk=run.pk).update(state="running")
    publish(run.pk, {"type": "token", "step": 2, "attempt": 1, "text": "Done."})
    publish(run.pk, {"type": "step", "index": 2, "kind": "model", "calls": []})
    wait_logged(run.pk, 2)

    async def scenario():
        communicator = await opened(mia)
        await communicator.send_json_to({"type": "subscribe", "run": run.pk})
        replay = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return replay

    replay = async_to_sync(scenario)()
    assert [item["event"] for item in replay["events"]] == [
        {"type": "step", "index": 0, "kind": "retrieval", "found": 0},
        {"type": "step", "index": 1, "kind": "model", "calls": ["lookup"]},
        {"type": "token", "step": 2, "attempt": 1, "text": "Done."},
        {"type": "step", "index": 2, "kind": "model", "calls": []},
    ]
    from agents.events import rebuilt_id

    assert [rebuilt_id(item["id"]) for item in replay["events"]] == [True, True, False, False]
