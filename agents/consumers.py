"""The browser's one websocket (`/ws/`): runs as they happen, conversations' new runs, the
reviewer inbox's notifications and the user's own (budget thresholds).

The session authenticates the connection (close code 4401 without one). Frames are JSON
objects; the client subscribes:

    {"type": "subscribe", "conversation": 12}   its runs in progress, and each new one
    {"type": "subscribe", "run": 34}            one run
    {"type": "subscribe", "inbox": true}        approval requests and held answers

A subscription the user may not have closes the socket with 4403, whether the object is
missing or someone else's. A malformed frame is answered with an `error` event; a client that
sends faster than RATE frames a second (BURST at once) is told so, and closed with 4429 if it
goes on. A run's events come first as a `replay` of everything logged so far (rebuilt from
the database where Redis lost the log), then live, each exactly once (agents.events).

The socket lives as long as its access (agents.revocation): it is closed with 4401 once its
session no longer signs the user in (signed out, the account disabled or deleted, the password
changed) and with 4403 once a subscription is no longer the user's (a run or conversation no
longer theirs, an inbox whose reviewer left the group), after which it hears nothing more. It
learns it at once from the announcement of the change, and in any case checks before it
forwards an event and while idle, at most WARDEN_LIVE_RECHECK_SECONDS after the last check.

An idle socket stays open: the server sends `{"type": "keepalive"}` after
WARDEN_LIVE_KEEPALIVE_SECONDS without a frame (proxies close silent connections), and answers
`{"type": "ping"}` with `{"type": "pong"}`. If Redis fails for longer than the channel layer
retries, the socket is told so (`{"type": "error", "reason": "live_unavailable"}`) and closed
with 4503; the page reconnects and its replay fills the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, InterfaceError
from limits import RateLimitItemPerSecond
from redis.exceptions import RedisError

from agents.events import last_logged, run_history, stream_id_after
from agents.models import FINAL_STATES, Conversation, Run
from agents.revocation import recheck_seconds, session_digest, session_users, user_group
from agents.selectors import access_conversation, access_run
from governance import ratelimits
from governance.access import NoAccess
from governance.approvals import reviewer_listens_on
from governance.live import shared_redis_client
from telemetry import metrics

logger = logging.getLogger(__name__)

UNAUTHENTICATED, FORBIDDEN, TOO_MANY, UNAVAILABLE = 4401, 4403, 4429, 4503
RATE, BURST, STRIKES = 5.0, 20.0, 20
FRAMES = RateLimitItemPerSecond(int(BURST), int(BURST / RATE))
MAX_FRAME = 4096
MAX_LISTED = 100


class LiveConsumer(AsyncWebsocketConsumer):
    async def __call__(self, scope, receive, send) -> None:
        """The consumer, and what ends it when Redis fails (past the retries of the channel
        layer's connections): the page is told, before the close, instead of a bare 1011."""
        self.runs: dict[int, str] = {}  # run id -> the last id of its replay
        self.joined: set[str] = set()
        # What the client subscribed to, checked again while the socket is open (a run
        # followed through its conversation goes with the conversation).
        self.subscribed_runs: set[int] = set()
        self.conversations: set[int] = set()
        self.inbox: set[str] = set()
        self.ended: int | None = None  # the close code, once access ended
        self.checking = asyncio.Lock()
        self.redis = None
        self.keeper: asyncio.Task | None = None
        self.counted = False  # among the open connections (telemetry.metrics.WEBSOCKETS)
        try:
            await super().__call__(scope, receive, send)
        except (RedisError, OSError) as exc:
            logger.warning("a websocket lost the channel layer: %s", exc)
            frame = {
                "type": "error",
                "reason": "live_unavailable",
                "detail": "live updates are unavailable for a moment; reconnect",
            }
            with contextlib.suppress(Exception):  # the client may have left first
                await send({"type": "websocket.send", "text": json.dumps(frame)})
                await send({"type": "websocket.close", "code": UNAVAILABLE})
            await self._release(discard=False)
        finally:
            if self.counted:
                metrics.WEBSOCKETS.labels(consumer="live").dec()

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.strikes = 0
        self.sent_at = self.checked_at = time.monotonic()
        self.recheck = recheck_seconds()
        await self.accept()
        metrics.WEBSOCKETS.labels(consumer="live").inc()
        self.counted = True
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        await self._join(user_group(self.user.pk))
        self.keeper = asyncio.ensure_future(self._keep_alive())

    async def disconnect(self, code) -> None:
        await self._release(discard=True)

    async def _release(self, *, discard: bool) -> None:
        if self.keeper is not None:
            self.keeper.cancel()
            self.keeper = None
        if discard:
            for group in self.joined:
                await self.channel_layer.group_discard(group, self.channel_name)
        self.joined = set()  # a failed layer's groups expire by themselves (a day)
        self.redis = None  # the loop's shared client: not this socket's to close

    async def _keep_alive(self) -> None:
        """A frame at least every WARDEN_LIVE_KEEPALIVE_SECONDS, so that nothing between the
        page and here takes a quiet socket for a dead one; and the user's access checked while
        nothing else checks it, so that a quiet socket of a disabled user closes too."""
        every = settings.WARDEN_LIVE_KEEPALIVE_SECONDS
        while True:
            due = min(self.sent_at + every, self.checked_at + self.recheck)
            await asyncio.sleep(max(0.5, due - time.monotonic()))
            if not await self._allowed():
                return
            if time.monotonic() - self.sent_at >= every:
                try:
                    await self._send({"type": "keepalive"})
                except Exception:  # the socket is closing: its disconnect ends this task
                    return

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.user is None or not self.user.is_authenticated:
            return  # closed at connect; frames already on their way are not read
        if not await self._within_rate():
            self.strikes += 1  # forgiven once the client has kept to the rate for a while
            if self.strikes >= STRIKES:
                await self.close(code=TOO_MANY)
            else:
                await self._error(f"too many messages: at most {RATE:g} a second")
            return
        if text_data is None or len(text_data) > MAX_FRAME:
            await self._error(f"send JSON text frames of at most {MAX_FRAME} bytes")
            return
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):
            await self._error("the message is not JSON")
            return
        if not isinstance(frame, dict) or frame.get("type") not in ("subscribe", "ping"):
            await self._error('expected {"type": "subscribe", ...} or {"type": "ping"}')
            return
        if frame["type"] == "ping":
            await self._send({"type": "pong"})
        elif not await self._allowed(now=True):
            return  # signed out elsewhere, or deactivated: closed
        elif _is_id(frame.get("run")):
            await self._subscribe_run(frame["run"])
        elif _is_id(frame.get("conversation")):
            await self._subscribe_conversation(frame["conversation"])
        elif frame.get("inbox") is True:
            await self._subscribe_inbox()
        else:
            await self._error("subscribe to a run, a conversation (by id) or the inbox")

    # Subscriptions

    async def _subscribe_run(self, run_id: int) -> None:
        try:
            run = await database_sync_to_async(access_run)(self.user, run_id)
        except NoAccess:
            await self.close(code=FORBIDDEN)
            return
        self.subscribed_runs.add(run.pk)
        await self._follow(run.pk, run.state)

    async def _subscribe_conversation(self, conversation_id: int) -> None:
        try:
            await database_sync_to_async(access_conversation)(self.user, conversation_id)
        except NoAccess:
            await self.close(code=FORBIDDEN)
            return
        # Join first, then read: a run started in between is both announced and listed
        # (`_follow` takes it once).
        self.conversations.add(conversation_id)
        await self._join(f"conversation.{conversation_id}")
        runs = await database_sync_to_async(_runs_of)(conversation_id)
        await self._send(
            {"type": "subscribed", "conversation": conversation_id, "runs": [pk for pk, _ in runs]}
        )
        for run_id, state in runs:
            if state not in FINAL_STATES:
                await self._follow(run_id, state)

    async def _subscribe_inbox(self) -> None:
        groups = await database_sync_to_async(reviewer_listens_on)(self.user)
        if not groups:
            await self.close(code=FORBIDDEN)
            return
        self.inbox.update(groups)
        for group in groups:
            await self._join(group)
        await self._send({"type": "subscribed", "inbox": True})

    async def _follow(self, run_id: int, state: str) -> None:
        """Join the run's group, then send its log: an event logged before the join is in the
        log, one after it arrives live; ids drop what is both."""
        if run_id in self.runs:
            return
        await self._join(f"run.{run_id}")
        if self.redis is None:
            self.redis = shared_redis_client()
        try:
            events = await run_history(self.redis, run_id)
        except Exception:  # the page still has the database's state; live events go on
            logger.warning("could not read run %s's events", run_id, exc_info=True)
            events = []
        # Rebuilt events' ids are below every logged one: a live event is after all of them.
        self.runs[run_id] = last_logged(events)
        await self._send({"type": "replay", "run": run_id, "state": state, "events": events})

    # Access, while the socket is open

    async def _allowed(self, *, now: bool = False) -> bool:
        """Whether the socket may still send: its session still signs the user in and each
        subscription is still the user's. Asked of the database at most every `recheck`
        seconds (unless `now`); once not, the socket leaves its groups and closes."""
        async with self.checking:  # an event waits for a check under way, and its verdict
            if self.ended is not None:
                return False
            if not now and time.monotonic() - self.checked_at < self.recheck:
                return True
            code = await _checks().verdict(
                Probe(
                    user_id=self.user.pk,
                    session_key=self.scope["session"].session_key,
                    runs=frozenset(self.subscribed_runs),
                    conversations=frozenset(self.conversations),
                    inbox=frozenset(self.inbox),
                )
            )
            self.checked_at = time.monotonic()
            if code is None:
                return True
            await self._end(code)
            return False

    async def _end(self, code: int) -> None:
        """Leave every group first (nothing published from now on reaches this socket), then
        close; what was already on its way is dropped by `_send`."""
        self.ended = code
        with contextlib.suppress(RedisError, OSError):  # failed: the groups expire (a day)
            for group in self.joined:
                await self.channel_layer.group_discard(group, self.channel_name)
        self.joined, self.runs = set(), {}
        await self.close(code=code)

    async def access_changed(self, message: dict) -> None:
        """The user's access may have ended (agents.revocation): ask again now. A sign-out
        that names this socket's session ends it without asking (the database still has the
        session for a moment)."""
        ended = message.get("session")
        if ended and ended == session_digest(self.scope["session"].session_key):
            async with self.checking:
                if self.ended is None:
                    await self._end(UNAUTHENTICATED)
            return
        await self._allowed(now=True)

    # Channel-layer handlers: each forwards only once access is known to hold

    async def run_event(self, message: dict) -> None:
        """Redis gives each new entry a larger id than every entry before it: an event is in
        the replay exactly when its id is at most the replay's last (whatever order the
        publishing processes send in)."""
        run_id = message["run"]
        replayed = self.runs.get(run_id)
        if replayed is None or not stream_id_after(message["id"], replayed):
            return  # not followed, or already sent in the replay
        if await self._allowed():
            await self._send(
                {"type": "event", "run": run_id, "id": message["id"], "event": message["event"]}
            )

    async def group_event(self, message: dict) -> None:
        event = message["event"]
        if event.get("type") == "run.started" and await self._allowed():
            await self._send(event)
            await self._follow(event["run"], "queued")

    async def review_event(self, message: dict) -> None:
        if await self._allowed():
            await self._send({"type": "inbox", "event": message["event"]})

    async def user_event(self, message: dict) -> None:
        if await self._allowed():
            await self._send({"type": "notice", "event": message["event"]})

    # Plumbing

    async def _join(self, group: str) -> None:
        if self.ended is not None:  # ended while a subscription was being made
            return
        if group not in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.add(group)

    async def _send(self, payload: dict) -> None:
        if self.ended is not None:
            return
        self.sent_at = time.monotonic()
        await self.send(text_data=json.dumps(payload))

    async def _error(self, detail: str) -> None:
        await self._send({"type": "error", "detail": detail})

    async def _within_rate(self) -> bool:
        """RATE frames a second, BURST at once: a moving window of BURST frames (refused ones
        not counted), in Redis through a thread (a slow Redis must not stall the loop)."""
        key = ("ws-frames", self.channel_name)
        if not await asyncio.to_thread(ratelimits.hit, FRAMES, *key, window="moving"):
            return False
        if self.strikes:  # the window held nothing else: the client kept to the rate a while
            left = await asyncio.to_thread(ratelimits.remaining, FRAMES, *key, window="moving")
            if left == FRAMES.amount - 1:
                self.strikes = 0
        return True


def _runs_of(conversation_id: int) -> list[tuple[int, str]]:
    """The conversation's latest runs (the page fetches any it lacks, e.g. after a
    disconnect), oldest first."""
    latest = Run.objects.filter(conversation_id=conversation_id).order_by("-created_at")
    return list(latest.values_list("pk", "state")[:MAX_LISTED])[::-1]


@dataclass(frozen=True)
class Probe:
    """What one socket's access check asks: is the session still the user's, and is each
    subscription still theirs."""

    user_id: int
    session_key: str | None
    runs: frozenset[int]
    conversations: frozenset[int]
    inbox: frozenset[str]


class _Checks:
    """The access checks of one event loop's sockets, batched: every check asked for while a
    batch is being answered goes into the next one, and each batch is one trip to the database
    thread and a handful of queries (`_verdicts`), however many sockets it holds. One check a
    socket, each its own trip, made a thousand open sockets queue for the one thread channels
    runs database work on, and live tokens waited seconds behind them
    (bench/websocket_sessions.py)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Probe, asyncio.Future]] = []
        self.answering: asyncio.Task | None = None

    async def verdict(self, probe: Probe) -> int | None:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((probe, future))
        if self.answering is None or self.answering.done():
            self.answering = asyncio.ensure_future(self._answer())
        return await asyncio.shield(future)

    async def _answer(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting, []
            try:
                codes = await database_sync_to_async(_verdicts)([p for p, _ in batch])
            except (DatabaseError, InterfaceError) as exc:  # refused unknown; pages reconnect
                logger.warning("websockets could not check their access: %s", exc)
                codes = [UNAVAILABLE] * len(batch)
            except asyncio.CancelledError:  # the server is stopping: so are the sockets
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # each socket's check raises it, as its own check would
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), code in zip(batch, codes, strict=True):
                if not future.done():
                    future.set_result(code)


_loops_checks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Checks] = (
    weakref.WeakKeyDictionary()
)


def _checks() -> _Checks:
    loop = asyncio.get_running_loop()
    checks = _loops_checks.get(loop)
    if checks is None:
        checks = _loops_checks[loop] = _Checks()
    return checks


def _verdicts(probes: list[Probe]) -> list[int | None]:
    """For each probe, None while its socket may go on; else the code to close it with. Runs
    and conversations are the owner's, as access_run and access_conversation have it (each
    asked at subscription). A query for the sessions, one for their users, one for the runs
    and one for the conversations named, whatever the number of probes (and the inbox's groups
    per reviewer)."""
    users = session_users(p.session_key for p in probes)
    run_owners = dict(
        Run.objects.filter(pk__in={r for p in probes for r in p.runs}).values_list(
            "pk",
            "actor_id",  # a run's actor owns its conversation (an MCP call has none)
        )
    )
    conversation_owners = dict(
        Conversation.objects.filter(
            pk__in={c for p in probes for c in p.conversations}
        ).values_list("pk", "owner_id")
    )
    listens: dict[int, set[str]] = {}

    def code(probe: Probe) -> int | None:
        user = users.get(probe.session_key) if probe.session_key else None
        if user is None or user.pk != probe.user_id:
            return UNAUTHENTICATED
        theirs = all(run_owners.get(r) == user.pk for r in probe.runs) and all(
            conversation_owners.get(c) == user.pk for c in probe.conversations
        )
        if probe.inbox and theirs:
            if user.pk not in listens:
                listens[user.pk] = set(reviewer_listens_on(user))
            theirs = probe.inbox <= listens[user.pk]
        return None if theirs else FORBIDDEN

    codes = [code(probe) for probe in probes]
    return codes


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63
