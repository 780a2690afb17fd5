"""Live channels left idle stay open (issue 17): a websocket and a run's event stream, both
quiet for a minute (past every timeout on the way: redis-py's 5 s socket timeout, the 5 s
that channels_redis blocks, proxies' minute), then get the next event. One idle minute
serves both, side by side on one event loop, as the page and an API client would be; the
test spends that minute asleep, so it can run beside any other."""

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from agents.events import publish
from integrations.tokens import token_create
from portal.tests.test_websocket import a_run, agent, mia, opened  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("committing_db")  # the consumer reads on its own thread
IDLE_SECONDS = 60


async def pump(response, chunks: asyncio.Queue) -> None:
    """The event stream's chunks, as they come, into `chunks` (None at its end)."""
    async for chunk in response.streaming_content:
        await chunks.put(chunk.decode())
    await chunks.put(None)


async def until(chunks: asyncio.Queue, text: str, timeout: float = 10) -> list[str]:
    """The chunks up to and including the first that holds `text`."""
    seen = []
    while True:
        chunk = await asyncio.wait_for(chunks.get(), timeout)
        assert chunk is not None, f"the stream ended before {text!r}: {seen}"
        seen.append(chunk)
        if text in chunk:
            return seen


def test_an_idle_websocket_and_event_stream_get_the_next_event(mia, agent, settings):  # noqa: F811
    every = settings.WARDEN_LIVE_KEEPALIVE_SECONDS
    run = a_run(mia, agent)
    _, secret = token_create(user=mia, name="idle", scopes=["runs:read"], days=1)

    async def scenario():
        socket = await opened(mia)
        await socket.send_json_to({"type": "subscribe", "run": run.pk})
        assert (await socket.receive_json_from(timeout=5))["type"] == "replay"
        response = await AsyncClient().get(
            f"/api/v1/runs/{run.pk}/events", headers={"Authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 200
        chunks: asyncio.Queue = asyncio.Queue()
        reader = asyncio.ensure_future(pump(response, chunks))
        assert (await asyncio.wait_for(chunks.get(), 10)).startswith("retry:")

        await asyncio.sleep(IDLE_SECONDS)  # nothing happens to the run meanwhile

        quiet = []  # what the socket sent while nothing happened
        while not await socket.receive_nothing(timeout=0.1):
            quiet.append(await socket.receive_json_from(timeout=1))
        kept = []
        while not chunks.empty():
            kept.append(chunks.get_nowait())
        publish(run.pk, {"type": "token", "step": 0, "attempt": 1, "text": "after a minute"})
        event = await socket.receive_json_from(timeout=10)
        streamed = await until(chunks, "after a minute")
        publish(run.pk, {"type": "final", "state": "succeeded"})
        ended = await until(chunks, '"type": "final"')
        assert await asyncio.wait_for(chunks.get(), 10) is None  # the stream ends after it
        await reader
        await socket.disconnect()
        return quiet, kept, event, streamed, ended

    quiet, kept, event, streamed, ended = async_to_sync(scenario)()

    assert event["type"] == "event"
    assert event["event"]["text"] == "after a minute"
    assert "event: token" in streamed[-1]
    assert "event: final" in ended[-1]
    # Both kept the line alive meanwhile, and said nothing else.
    assert {frame["type"] for frame in quiet} == {"keepalive"}
    assert len(quiet) >= IDLE_SECONDS // every - 1
    assert set(kept) == {": keep-alive\n\n"}
    assert len(kept) >= IDLE_SECONDS // every - 1
