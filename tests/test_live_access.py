"""Live channels end with their user's access (issue 19, point 3; agents.revocation): a
websocket (agents.consumers) and the API's event streams (a run's events, a streamed
OpenAI-compatible completion), on the real channel layer and Redis of the test session.

Announced changes (a save, a delete, a sign-out, a group left) end a channel at once: these
tests set WARDEN_LIVE_RECHECK_SECONDS to a minute, so that only the announcement can have done
it. Changes no signal tells (`QuerySet.update`, a revoked token, a conversation given away) are
found by the periodic check: those tests set it to a second. What follows the end is never
delivered: events published after it are followed, in one publisher's order, by an event for
an active user, whose arrival says the earlier ones were sent."""

import asyncio
import json
import uuid
from functools import partial
from importlib import import_module

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import Group
from django.test import AsyncClient, Client
from prometheus_client import REGISTRY

from agents.events import publish
from agents.models import Conversation, Run
from config.asgi import application
from governance import roles
from governance.notify import reviewers_notify, user_notify
from integrations.tests.test_runs import _pump, _until
from integrations.tokens import token_create, token_revoke
from portal.tests.test_websocket import (  # noqa: F401 - fixtures
    a_run,
    agent,
    closed_with,
    members,
    mia,
    opened,
    oscar,
)

pytestmark = pytest.mark.usefixtures("committing_db")  # consumers and streams read on threads
ANNOUNCED, POLLED = 60, 1  # WARDEN_LIVE_RECHECK_SECONDS for each kind of test
DEADLINE = 10  # seconds; an announced end takes milliseconds, a polled one about a second


def signed_in(user) -> str:
    """A new session signing `user` in, as the sign-in page makes one; its key."""
    session = import_module(django_settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session.session_key


async def following(user, run: Run) -> tuple:
    """A socket of `user`'s, subscribed to `run`, its replay read."""
    communicator = await opened(user)
    await communicator.send_json_to({"type": "subscribe", "run": run.pk})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "replay"
    return communicator


async def live_event(communicator, text: str) -> dict:
    frame = await communicator.receive_json_from(timeout=DEADLINE)
    assert frame["type"] == "event", frame
    assert frame["event"].get("text") == text, frame
    return frame


def requeued_and_final(run: Run) -> None:
    publish(run.pk, {"type": "requeued", "attempt": 2})
    publish(run.pk, {"type": "final", "state": "succeeded"})


def token(text: str) -> dict:
    return {"type": "token", "step": 1, "attempt": 1, "text": text}


# Websockets --------------------------------------------------------------------------------


def test_a_disabled_users_socket_closes_at_once_and_hears_nothing_more(mia, oscar, agent, settings):  # noqa: F811
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    hers, his = a_run(mia, agent), a_run(oscar, agent)

    async def scenario():
        her_socket, his_socket = await following(mia, hers), await following(oscar, his)
        publish(hers.pk, token("before"))
        await live_event(her_socket, "before")

        mia.is_active = False
        await sync_to_async(mia.save)()
        code = await closed_with(her_socket)
        requeued_and_final(hers)
        publish(his.pk, token("still live"))
        await live_event(his_socket, "still live")  # after hers, in the publisher's order
        heard_after = not await her_socket.receive_nothing(timeout=0.1)
        await her_socket.disconnect()
        await his_socket.disconnect()
        return code, heard_after

    code, heard_after = async_to_sync(scenario)()

    assert code == 4401
    assert not heard_after
    assert members(f"run.{hers.pk}") == 0
    assert members(f"user.{mia.pk}") == 0


def test_a_socket_closes_within_the_check_interval_when_no_signal_tells(
    mia,  # noqa: F811
    oscar,  # noqa: F811
    agent,  # noqa: F811
    settings,
):
    """`QuerySet.update` sends no signal: the socket's own check, while it is idle, ends it."""
    settings.WARDEN_LIVE_RECHECK_SECONDS = POLLED
    hers, his = a_run(mia, agent), a_run(oscar, agent)

    async def scenario():
        her_socket, his_socket = await following(mia, hers), await following(oscar, his)
        await sync_to_async(
            get_user_model().objects.filter(pk=mia.pk).update, thread_sensitive=True
        )(is_active=False)
        output = await her_socket.receive_output(timeout=DEADLINE)  # keep-alives come later
        requeued_and_final(hers)
        publish(his.pk, token("still live"))
        await live_event(his_socket, "still live")
        heard_after = not await her_socket.receive_nothing(timeout=0.1)
        await her_socket.disconnect()
        await his_socket.disconnect()
        return output, heard_after

    output, heard_after = async_to_sync(scenario)()

    assert output == {"type": "websocket.close", "code": 4401}
    assert not heard_after
    assert members(f"run.{hers.pk}") == 0


def test_a_deleted_users_socket_closes_at_once(oscar, agent, settings):  # noqa: F811
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    gone = get_user_model().objects.create_user(f"gone-{uuid.uuid4().hex[:6]}")
    his = a_run(oscar, agent)

    async def scenario():
        communicator, his_socket = await opened(gone), await following(oscar, his)
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}
        gone_id = gone.pk
        await sync_to_async(gone.delete)()
        code = await closed_with(communicator)
        await sync_to_async(user_notify)(gone_id, {"type": "budget.threshold_reached"})
        publish(his.pk, token("still live"))
        await live_event(his_socket, "still live")
        heard_after = not await communicator.receive_nothing(timeout=0.1)
        await communicator.disconnect()
        await his_socket.disconnect()
        return gone_id, code, heard_after

    gone_id, code, heard_after = async_to_sync(scenario)()

    assert code == 4401
    assert not heard_after
    assert members(f"user.{gone_id}") == 0


def test_signing_out_closes_that_sessions_socket_and_no_other(mia, agent, settings):  # noqa: F811
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    run = a_run(mia, agent)
    leaving, staying = signed_in(mia), signed_in(mia)

    def sign_out() -> int:
        browser = Client()
        browser.cookies[django_settings.SESSION_COOKIE_NAME] = leaving
        return browser.post("/logout/").status_code

    def open_sockets() -> float:
        return REGISTRY.get_sample_value("warden_websocket_connections", {"consumer": "live"}) or 0

    before = open_sockets()

    async def scenario():
        sockets = []
        for key in (leaving, staying):
            headers = [
                (b"origin", b"http://localhost"),
                (b"host", b"localhost"),
                (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={key}".encode()),
            ]
            communicator = WebsocketCommunicator(application, "/ws/", headers=headers)
            assert (await communicator.connect(timeout=5))[0]
            await communicator.send_json_to({"type": "subscribe", "run": run.pk})
            assert (await communicator.receive_json_from(timeout=5))["type"] == "replay"
            sockets.append(communicator)
        opened = open_sockets()
        status = await sync_to_async(sign_out)()
        code = await closed_with(sockets[0])
        publish(run.pk, token("after"))
        await live_event(sockets[1], "after")  # the other sign-in is still live
        heard_after = not await sockets[0].receive_nothing(timeout=0.1)
        for communicator in sockets:
            await communicator.disconnect()
        return status, code, heard_after, opened

    status, code, heard_after, opened = async_to_sync(scenario)()

    assert status == 302
    assert code == 4401
    assert not heard_after
    # The open-connections gauge (telemetry.metrics) counted both, and neither once closed.
    assert (opened, open_sockets()) == (before + 2, before)


def test_a_new_password_closes_the_sockets_of_the_sessions_it_ends(mia, agent, settings):  # noqa: F811
    """A session is signed with the password it was made with (Django's session hash)."""
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    run = a_run(mia, agent)

    async def scenario():
        communicator = await following(mia, run)
        mia.set_password("a new one, elsewhere")
        await sync_to_async(mia.save)()
        code = await closed_with(communicator)
        await communicator.disconnect()
        return code

    assert async_to_sync(scenario)() == 4401
    assert members(f"run.{run.pk}") == 0


def test_a_conversation_given_away_closes_its_subscription_with_4403(mia, oscar, agent, settings):  # noqa: F811
    """Runs and conversations are their owner's (access_run, access_conversation, as the API
    has it): one that is no longer the subscriber's stops reaching them."""
    settings.WARDEN_LIVE_RECHECK_SECONDS = POLLED
    run = a_run(mia, agent)

    async def scenario():
        communicator = await opened(mia)
        await communicator.send_json_to({"type": "subscribe", "conversation": run.conversation_id})
        assert (await communicator.receive_json_from(timeout=5))["type"] == "subscribed"
        assert (await communicator.receive_json_from(timeout=5))["type"] == "replay"
        await sync_to_async(
            Conversation.objects.filter(pk=run.conversation_id).update, thread_sensitive=True
        )(owner=oscar)
        output = await communicator.receive_output(timeout=DEADLINE)
        await communicator.disconnect()
        return output

    output = async_to_sync(scenario)()

    assert output == {"type": "websocket.close", "code": 4403}
    assert members(f"run.{run.pk}") == 0
    assert members(f"conversation.{run.conversation_id}") == 0


def test_a_reviewer_removed_from_the_role_loses_the_inbox_at_once(settings):
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    reviewers = Group.objects.get_or_create(name=roles.REVIEWER)[0]
    rey, ann = (get_user_model().objects.create_user(f"{n}-{uuid.uuid4().hex[:6]}") for n in "ra")
    for person in (rey, ann):
        person.groups.add(reviewers)

    async def inbox(user):
        communicator = await opened(user)
        await communicator.send_json_to({"type": "subscribe", "inbox": True})
        assert await communicator.receive_json_from(timeout=5) == {
            "type": "subscribed",
            "inbox": True,
        }
        return communicator

    async def scenario():
        his, hers = await inbox(rey), await inbox(ann)
        await sync_to_async(rey.groups.remove)(reviewers)
        code = await closed_with(his)
        event = {"type": "approval.requested", "approval": 1}
        await sync_to_async(reviewers_notify)([], event)
        heard = await hers.receive_json_from(timeout=DEADLINE)
        heard_after = not await his.receive_nothing(timeout=0.1)
        await his.disconnect()
        await hers.disconnect()
        return code, heard, heard_after

    code, heard, heard_after = async_to_sync(scenario)()

    assert code == 4403
    assert heard == {"type": "inbox", "event": {"type": "approval.requested", "approval": 1}}
    assert not heard_after


def test_an_active_users_socket_goes_on_through_checks_and_announcements(mia, agent, settings):  # noqa: F811
    """Leaving a group that grants no subscription is announced too: the socket asks, and
    stays; so it does on each periodic check."""
    settings.WARDEN_LIVE_RECHECK_SECONDS = POLLED
    run = a_run(mia, agent)
    club = Group.objects.create(name=f"club {uuid.uuid4().hex[:6]}")
    mia.groups.add(club)

    async def scenario():
        communicator = await following(mia, run)
        await sync_to_async(mia.groups.remove)(club)
        publish(run.pk, token("after the announcement"))
        first = await live_event(communicator, "after the announcement")
        await asyncio.sleep(3 * POLLED)  # three checks' worth of quiet
        publish(run.pk, token("after the checks"))
        second = await live_event(communicator, "after the checks")
        await communicator.send_json_to({"type": "ping"})
        while (frame := await communicator.receive_json_from(timeout=5))["type"] == "keepalive":
            pass
        await communicator.disconnect()
        return first, second, frame

    first, second, pong = async_to_sync(scenario)()

    assert first["run"] == second["run"] == run.pk
    assert pong == {"type": "pong"}


# Event streams -----------------------------------------------------------------------------


def pat_header(user, scopes=("runs:read", "agents:run")) -> tuple:
    made, secret = token_create(user=user, name="live", scopes=list(scopes), days=1)
    return made, {"Authorization": f"Bearer {secret}"}


async def streaming(run: Run, headers: dict) -> tuple:
    response = await AsyncClient().get(f"/api/v1/runs/{run.pk}/events", headers=headers)
    assert response.status_code == 200
    chunks: asyncio.Queue = asyncio.Queue()
    reader = asyncio.ensure_future(_pump(response, chunks))
    await _until(chunks, "retry:", timeout=DEADLINE)
    return chunks, reader


async def rest_of(chunks: asyncio.Queue) -> str:
    """Everything the stream sends until it ends (it must end within the deadline)."""
    seen = []
    while (chunk := await asyncio.wait_for(chunks.get(), DEADLINE)) is not None:
        seen.append(chunk)
    return "".join(seen)


def revoked_at_end(text: str) -> dict:
    last = text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: "), text
    return json.loads(last.split("data: ", 1)[1])


def test_a_disabled_users_event_stream_ends_at_once(mia, oscar, agent, settings):  # noqa: F811
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    hers, his = a_run(mia, agent), a_run(oscar, agent)
    _, her_auth = pat_header(mia)
    _, his_auth = pat_header(oscar)

    async def scenario():
        (her_chunks, her_reader), (his_chunks, his_reader) = (
            await streaming(hers, her_auth),
            await streaming(his, his_auth),
        )
        publish(hers.pk, token("before"))
        await _until(her_chunks, '"before"', timeout=DEADLINE)
        mia.is_active = False
        await sync_to_async(mia.save)()
        requeued_and_final(hers)  # logged after the announcement: never sent
        text = await rest_of(her_chunks)
        publish(his.pk, token("still live"))
        await _until(his_chunks, '"still live"', timeout=DEADLINE)
        publish(his.pk, {"type": "final", "state": "succeeded"})
        await rest_of(his_chunks)
        await asyncio.gather(her_reader, his_reader)
        return text

    text = async_to_sync(scenario)()

    assert revoked_at_end(text)["reason"] == "access_revoked"
    assert "requeued" not in text
    assert '"final"' not in text
    assert "id:" not in text.strip().split("\n\n")[-1]  # nothing to resume after


def test_an_event_stream_ends_within_the_check_interval_when_no_signal_tells(mia, agent, settings):  # noqa: F811
    settings.WARDEN_LIVE_RECHECK_SECONDS = POLLED
    run = a_run(mia, agent)
    _, auth = pat_header(mia)

    async def scenario():
        chunks, reader = await streaming(run, auth)
        publish(run.pk, token("before"))  # sent: the stream's first check is behind it
        await _until(chunks, '"before"', timeout=DEADLINE)
        await sync_to_async(
            get_user_model().objects.filter(pk=mia.pk).update, thread_sensitive=True
        )(is_active=False)
        text = await rest_of(chunks)  # an idle stream: its next read, at most POLL_MS on
        await reader
        return text

    text = async_to_sync(scenario)()

    assert revoked_at_end(text)["reason"] == "access_revoked"


@pytest.mark.parametrize("kind", ["personal", "oauth2"])
def test_a_revoked_tokens_event_stream_sends_nothing_more(mia, agent, settings, kind):  # noqa: F811
    """Revoking a token is an update (a personal one) or a delete (OAuth2's revocation): the
    next event finds it revoked (its check is due)."""
    from oauth2_provider.models import AccessToken

    from integrations.tests.conftest import application_for, token_of

    settings.WARDEN_LIVE_RECHECK_SECONDS = POLLED
    run = a_run(mia, agent)
    if kind == "personal":
        made, auth = pat_header(mia)
        revoke = partial(token_revoke, token=made, actor=mia)
    else:
        application = application_for(mia)
        auth = {"Authorization": f"Bearer {token_of(Client(), application, 'runs:read')}"}
        revoke = AccessToken.objects.filter(application=application).delete

    async def scenario():
        chunks, reader = await streaming(run, auth)
        publish(run.pk, token("before"))  # sent: the stream's first check is behind it
        await _until(chunks, '"before"', timeout=DEADLINE)
        await sync_to_async(revoke)()
        await asyncio.sleep(POLLED)  # past the last check, so that the next event asks
        requeued_and_final(run)
        text = await rest_of(chunks)
        await reader
        return text

    text = async_to_sync(scenario)()

    assert revoked_at_end(text)["reason"] == "access_revoked"
    assert "requeued" not in text


def test_a_deleted_users_event_stream_ends_at_once(oscar, agent, settings):  # noqa: F811
    """The stream's run goes with its owner's conversation; the stream ends on the announcement,
    before it would look for the run."""
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    gone = get_user_model().objects.create_user(f"gone-{uuid.uuid4().hex[:6]}")
    conversation = Conversation.objects.create(owner=gone, agent=agent)
    run = Run.objects.create(agent=agent, conversation=conversation, actor=oscar, input="hi")
    _, auth = pat_header(gone)

    async def scenario():
        chunks, reader = await streaming(run, auth)
        publish(run.pk, token("before"))  # sent: the stream's first check is behind it
        await _until(chunks, '"before"', timeout=DEADLINE)
        await sync_to_async(gone.delete)()
        text = await rest_of(chunks)
        await reader
        return text

    text = async_to_sync(scenario)()

    assert revoked_at_end(text)["reason"] == "access_revoked"
    assert not Run.objects.filter(pk=run.pk).exists()


def test_a_disabled_users_streamed_completion_ends_with_an_error(people, assistant, settings):
    """`stream=true` on the OpenAI-compatible endpoint, the run queued (no worker): the
    account is disabled while the client waits for the answer."""
    settings.WARDEN_LIVE_RECHECK_SECONDS = ANNOUNCED
    member = people.member
    _, auth = pat_header(member, scopes=("agents:run",))

    async def scenario():
        response = await AsyncClient().post(
            "/v1/chat/completions",
            {
                "model": f"agent:{assistant.slug}",
                "messages": [{"role": "user", "content": "Is the VPN down?"}],
                "stream": True,
            },
            content_type="application/json",
            headers=auth,
        )
        assert response.status_code == 200
        chunks: asyncio.Queue = asyncio.Queue()
        reader = asyncio.ensure_future(_pump(response, chunks))
        await _until(chunks, '"role": "assistant"', timeout=DEADLINE)
        run = await sync_to_async(Run.objects.get)(actor=member)
        publish(run.pk, token("before"))  # sent: the stream's first check is behind it
        await _until(chunks, '"content": "before"', timeout=DEADLINE)
        member.is_active = False
        await sync_to_async(member.save)()
        requeued_and_final(run)
        text = await rest_of(chunks)
        await reader
        return text

    text = async_to_sync(scenario)()

    frames = [part.removeprefix("data: ") for part in text.strip().split("\n\n")]
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["error"]["code"] == "access_revoked"
    assert '"finish_reason": "stop"' not in text
