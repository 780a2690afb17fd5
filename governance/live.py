"""The one way to send to the channel layer (live pages) from synchronous code: `send`.

Publishing with `async_to_sync(group_send)` costs a new event loop per message (~3 ms,
measured with bench/runtime_overhead.py). Instead one daemon thread per process owns a loop
and sends the messages in the order they were given; the caller only appends to a queue and
returns at once. A message may first be appended to a Redis stream (`Log`), for readers that
come late (a run's event log, a user's access announcements). Messages are notifications: the
database holds the truth, so a failure here is logged, not raised. What was given to `send`
is still sent when the process exits right after (a management command), for up to
FLUSH_SECONDS.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import redis.asyncio
    from redis.typing import EncodableT, FieldT

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, Any] = {}  # pid, loop, queue
FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class Log:
    """A Redis stream the message is appended to before it is sent (`fields`, each
    JSON-encoded, off the caller's path), trimmed to about `maxlen` entries and kept
    `keep_seconds`; with `id_as`, the message carries the entry's id under that key (and is
    not sent if the append failed)."""

    key: str
    fields: dict[str, object]
    maxlen: int
    keep_seconds: int
    id_as: str | None = None


_Queue: TypeAlias = "asyncio.Queue[tuple[str, dict[str, Any], Log | None]]"


def send(group: str, message: dict[str, Any], *, log: Log | None = None) -> None:
    """Send `message` to the channel group `group` (after appending it to `log`), in order
    with everything else this process sends; returns at once."""
    loop, queue = _publisher()
    loop.call_soon_threadsafe(queue.put_nowait, (group, message, log))


# Any, not redis.asyncio.Redis: agents.consumers and integrations.api.runs do not type their
# use of it yet (a client attribute first set to None; xread with a dict[str, str]).
def redis_client() -> Any:
    """An asyncio Redis client for the current event loop. Its reads block (XREAD) for less
    than its socket timeout (settings.REDIS_BLOCKING_OPTIONS); redis-py makes a dropped
    connection again and resends the command, a few times, before it raises."""
    import redis.asyncio
    from django.conf import settings

    return redis.asyncio.from_url(settings.REDIS_URL, **settings.REDIS_BLOCKING_OPTIONS)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def shared_redis_client() -> Any:
    """The current event loop's one Redis client, for every reader on it (a web process's
    websockets, its OpenAI-compatible waits). Its pool holds at most
    settings.WARDEN_LIVE_REDIS_CONNECTIONS connections and makes a command wait for a free one
    rather than fail: a crowd of sockets opening at once (bench/websocket_sessions.py: a thousand)
    got redis-py's "Too many connections" from per-socket clients and default pools of 100."""
    import redis.asyncio
    from django.conf import settings

    loop = asyncio.get_running_loop()
    client = _shared.get(loop)
    if client is None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.WARDEN_LIVE_REDIS_CONNECTIONS,
            timeout=settings.REDIS_BLOCKING_OPTIONS["socket_timeout"],
            **settings.REDIS_BLOCKING_OPTIONS,
        )
        client = _shared[loop] = redis.asyncio.Redis(connection_pool=pool)
    return client


def _publisher() -> tuple[asyncio.AbstractEventLoop, _Queue]:
    with _lock:
        if _state.get("pid") != os.getpid():  # first use, or a forked child: start afresh
            loop = asyncio.new_event_loop()
            queue_ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                _state["queue"] = asyncio.Queue()
                queue_ready.set()
                loop.run_until_complete(_drain(_state["queue"]))

            threading.Thread(target=run, name="warden-live", daemon=True).start()
            queue_ready.wait()
            _state.update(pid=os.getpid(), loop=loop)
            atexit.register(_flush)
        return _state["loop"], _state["queue"]


def _flush() -> None:
    with _lock:
        if _state.get("pid") != os.getpid():  # a forked child's copy of its parent's hook
            return
        loop, queue = _state["loop"], _state["queue"]
    with contextlib.suppress(Exception):  # a stuck Redis must not hold the exit up
        asyncio.run_coroutine_threadsafe(queue.join(), loop).result(timeout=FLUSH_SECONDS)


async def _drain(queue: _Queue) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    redis = redis_client()
    while True:
        group, message, log = await queue.get()
        try:
            if log is not None:
                sid = await _append(redis, log)
                if log.id_as:
                    message = {**message, log.id_as: sid}
            await layer.group_send(group, message)
        except Exception:
            logger.warning("could not send %s to %s", _kind(message), group, exc_info=True)
        finally:
            queue.task_done()


async def _append(redis: redis.asyncio.Redis, log: Log) -> str:
    async with redis.pipeline(transaction=False) as pipe:
        fields: dict[FieldT, EncodableT] = {
            name: json.dumps(value) for name, value in log.fields.items()
        }
        pipe.xadd(log.key, fields, maxlen=log.maxlen, approximate=True)
        pipe.expire(log.key, log.keep_seconds)
        sid: bytes | str
        sid, _ = await pipe.execute()
    return sid.decode() if isinstance(sid, bytes) else sid


def _kind(message: dict[str, Any]) -> str:
    event = message.get("event")
    return str(event.get("type") if isinstance(event, dict) else message.get("type"))
