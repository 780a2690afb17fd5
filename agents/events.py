"""Run events to the channel layer, off the orchestrator's path.

Publishing with `async_to_sync(group_send)` costs a new event loop per event (~3 ms, measured
with bench/runtime_overhead.py). Instead one daemon thread per process owns a loop and sends
the events in the order they were published; the orchestrator only appends to a queue. Events
are best-effort notifications (the database holds the run's truth), so a failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {}


def publish(run_id: int, event: dict) -> None:
    """Queue `event` for the channel group `run.<id>`; returns at once."""
    loop, queue = _publisher()
    loop.call_soon_threadsafe(queue.put_nowait, (f"run.{run_id}", event))


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
    while True:
        group, event = await queue.get()
        try:
            await layer.group_send(group, {"type": "run.event", "event": event})
        except Exception:
            logger.warning("could not publish %s to %s", event.get("type"), group, exc_info=True)
        finally:
            queue.task_done()
