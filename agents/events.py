"""Run events to the channel layer, off the orchestrator's path, with a replayable log.

Publishing with `async_to_sync(group_send)` costs a new event loop per event (~3 ms, measured
with bench/runtime_overhead.py). Instead one daemon thread per process owns a loop and sends
the events in the order they were published; the orchestrator only appends to a queue.

Each run event is first appended to the run's Redis stream (`warden:run:<id>:events`, kept a
day), then sent to the channel group `run.<id>` carrying its stream id. A page that subscribes
late (a reload, a reconnect) joins the group, reads the stream, and from then on drops live
events at or below the last id it read: every event exactly once, in order
(agents.consumers). Events are notifications; the database holds the run's truth, so a
failure here is logged, not raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {}
KEEP_SECONDS = 24 * 3600
MAX_EVENTS = 20_000  # per run: a long answer streams a few thousand tokens


def publish(run_id: int, event: dict) -> None:
    """Log `event` for run `run_id` and send it to the group `run.<id>`; returns at once."""
    loop, queue = _publisher()
    loop.call_soon_threadsafe(queue.put_nowait, (run_id, f"run.{run_id}", event))


def publish_group(group: str, event: dict) -> None:
    """Send `event` to a channel group, unlogged (a conversation's new run, say)."""
    loop, queue = _publisher()
    loop.call_soon_threadsafe(queue.put_nowait, (None, group, event))


def stream_key(run_id: int) -> str:
    return f"warden:run:{run_id}:events"


def stream_id_after(a: str, b: str) -> bool:
    """Redis stream ids compare as (milliseconds, sequence) pairs."""
    return tuple(map(int, a.split("-"))) > tuple(map(int, b.split("-")))


async def replay(redis, run_id: int) -> list[dict]:
    """Every logged event of the run, oldest first, each with its stream `id`."""
    entries = await redis.xrange(stream_key(run_id))
    return [{"id": _text(sid), "event": json.loads(fields[b"e"])} for sid, fields in entries]


def redis_client():
    """An asyncio Redis client for the current event loop."""
    import redis.asyncio
    from django.conf import settings

    return redis.asyncio.from_url(settings.REDIS_URL)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _publisher():
    with _lock:
        if _state.get("pid") != os.getpid():  # first use, or a forked child: start afresh
            loop = asyncio.new_event_loop()
            queue_ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                _state["queue"] = asyncio.Queue()
                queue_ready.set()
                loop.run_until_complete(_drain(_state["queue"]))

            threading.Thread(target=run, name="warden-run-events", daemon=True).start()
            queue_ready.wait()
            _state.update(pid=os.getpid(), loop=loop)
        return _state["loop"], _state["queue"]


async def _drain(queue: asyncio.Queue) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    redis = redis_client()
    while True:
        run_id, group, event = await queue.get()
        try:
            message = {"type": "run.event" if run_id else "group.event", "event": event}
            if run_id is not None:
                message["run"] = run_id
                message["id"] = await _log(redis, run_id, event)
            await layer.group_send(group, message)
        except Exception:
            logger.warning("could not publish %s to %s", event.get("type"), group, exc_info=True)
        finally:
            queue.task_done()


async def _log(redis, run_id: int, event: dict) -> str:
    key = stream_key(run_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"e": json.dumps(event)}, maxlen=MAX_EVENTS, approximate=True)
        pipe.expire(key, KEEP_SECONDS)
        sid, _ = await pipe.execute()
    return _text(sid)
