"""Run events to the channel layer, off the orchestrator's path, with a replayable log.

They go through the process's one publisher (governance.live: a thread of its own sends them
in the order they were published; the orchestrator only appends to a queue).

Each run event is first appended to the run's Redis stream (`warden:run:<id>:events`, kept a
day), then sent to the channel group `run.<id>` carrying its stream id. A page that subscribes
late (a reload, a reconnect) joins the group, reads the stream, and from then on drops live
events at or below the last id it read: every event exactly once, in order
(agents.consumers). Events are notifications; the database holds the run's truth, so a
failure here is logged, not raised.

The log may be lost (Redis restarted without it, or it expired): `run_history` then makes the
run's events again from its committed steps and state (agents.selectors.run_events_rebuilt),
tokens excepted, so that every reader (the websocket's replay, the API's event stream) still
ends with the run's final state. A rebuilt event's id is `0-<n>`, below every logged id, so a
client resuming after one gets the rest; across a loss a step event may come twice, never not
at all.
"""

from __future__ import annotations

import json

from governance.live import Log, send

KEEP_SECONDS = 24 * 3600
MAX_EVENTS = 20_000  # per run: a long answer streams a few thousand tokens


def publish(run_id: int, event: dict) -> None:
    """Log `event` for run `run_id` and send it to the group `run.<id>` with its stream id;
    returns at once."""
    log = Log(stream_key(run_id), {"e": event}, MAX_EVENTS, KEEP_SECONDS, id_as="id")
    send(f"run.{run_id}", {"type": "run.event", "event": event, "run": run_id}, log=log)


def publish_group(group: str, event: dict) -> None:
    """Send `event` to a channel group, unlogged (a conversation's new run, say)."""
    send(group, {"type": "group.event", "event": event})


def stream_key(run_id: int) -> str:
    return f"warden:run:{run_id}:events"


def stream_id_after(a: str, b: str) -> bool:
    """Redis stream ids compare as (milliseconds, sequence) pairs."""
    return tuple(map(int, a.split("-"))) > tuple(map(int, b.split("-")))


async def replay(redis, run_id: int) -> list[dict]:
    """Every logged event of the run, oldest first, each with its stream `id`."""
    return _entries(await redis.xrange(stream_key(run_id)))


async def run_history(redis, run_id: int, after: str = "0-0") -> list:
    """The run's events after `after`, each `{"id", "event"}`, oldest first: the log's, with
    what the database says in place of what the log lost, ending with the run's final (or
    held) state if it has one. A reader whose Redis connection failed calls it again with
    the last id it sent: if the log no longer holds that id (Redis restarted without it),
    the steps are sent again from the database."""
    from asgiref.sync import sync_to_async

    from agents.selectors import releasing, run_events_rebuilt

    # The database first: what is logged meanwhile is in the log read after it, whereas a
    # log read first would miss it, and the database's version would stand in for it.
    rebuilt = await sync_to_async(releasing(run_events_rebuilt))(run_id=run_id)
    key = stream_key(run_id)
    if rebuilt_id(after):
        logged, lost = await replay(redis, run_id), True
    else:
        logged = _entries(await redis.xrange(key, min=f"({after}"))
        lost = not await redis.xrange(key, min=after, max=after)
    return history_merge(logged, rebuilt, after=after, lost=lost)


def history_merge(logged: list, rebuilt: list, *, after: str, lost: bool) -> list:
    """`logged` (entries after `after`) with, where the log lost its beginning (`lost`), the
    rebuilt step events before the first step the log still mentions, and the rebuilt final
    (or held) event when the log has none. A rebuilt event keeps its `0-<n>` id only while
    everything sent is rebuilt (ids must grow, and must be resumable)."""
    kinds = {item["event"].get("type") for item in logged}
    resumable = rebuilt_id(after)
    floor = _seq(after) if resumable else 0
    newer = [item for item in rebuilt if _seq(item["id"]) > floor]
    before = []
    if lost:
        mentioned = [s for item in logged if (s := _step_of(item["event"])) is not None]
        first = min(mentioned, default=None)
        before = [
            {"id": item["id"] if resumable else None, "event": item["event"]}
            for item in newer
            if item["step"] is not None and (first is None or item["step"] < first)
        ]
    tail = []
    if "final" not in kinds:
        tail = [
            {"id": item["id"] if resumable and not logged else None, "event": item["event"]}
            for item in newer
            if item["step"] is None and item["event"]["type"] not in kinds
        ]
    return before + logged + tail


def rebuilt_id(sid: str) -> bool:
    """An id `0-<n>`: an event rebuilt from the database (a logged id is a time in ms)."""
    return sid.split("-")[0] == "0"


def last_logged(items: list, start: str = "0-0") -> str:
    """The largest id among `items` (and `start`), to read the log on after."""
    last = start
    for item in items:
        if item["id"] is not None and stream_id_after(item["id"], last):
            last = item["id"]
    return last


def _step_of(event: dict) -> int | None:
    """The index of the step an event is about (a step's own event, a token of its answer)."""
    kind = event.get("type")
    value = event.get("index") if kind == "step" else event.get("step") if kind == "token" else None
    return value if isinstance(value, int) else None


def _seq(sid: str) -> int:
    return int(sid.split("-")[1])


def _entries(entries) -> list[dict]:
    return [{"id": _text(sid), "event": json.loads(fields[b"e"])} for sid, fields in entries]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
