"""Runs through the API: start one (idempotently), follow its events, cancel it.

A run started here comes through the chat's front door (agents.submit.run_submit: input,
conversation, idempotency, then access, policy, budgets, guardrails, audit) and executes in a
Celery worker. `?wait=N` holds the answer up to N seconds for short synchronous use; otherwise
the caller polls the run, follows its events (Server-Sent Events, resumable with
`Last-Event-ID`) or receives a webhook.
"""

from __future__ import annotations

import json
import logging
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.events import last_logged, run_history, stream_key
from agents.models import FINAL_STATES, Run
from agents.selectors import access_agent_by_slug, access_run, releasing, run_wait
from agents.services import run_cancel
from agents.submit import IDEMPOTENCY_KEY, MAX_INPUT, run_submit
from governance.live import redis_client
from integrations.api.auth import HasScope
from integrations.api.streams import REVOKED_DETAIL, AccessWatch, credential_of
from integrations.api.views import RunSerializer
from integrations.api.waits import SlotStream, wait_slot_give, wait_slot_take

logger = logging.getLogger(__name__)
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
FINISHED_GRACE_MS = 1500
POLL_MS = 5000  # the run's state is read at least this often (a final event Redis lost)
REDIS_OUTAGE_SECONDS = 30  # how long a stream waits for Redis to come back


class RunRequest(serializers.Serializer):
    input = serializers.CharField(max_length=MAX_INPUT, trim_whitespace=False)
    conversation = serializers.IntegerField(
        required=False, min_value=1, help_text="Continue one of your conversations with the agent."
    )


class RunAcceptedSerializer(RunSerializer):
    url = serializers.SerializerMethodField()
    events_url = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "url", "events_url"]

    def get_url(self, run) -> str:
        return reverse("api-run", args=[run.pk])

    def get_events_url(self, run) -> str:
        return reverse("api-run-events", args=[run.pk])


@extend_schema(
    summary="Start a run of an agent",
    description="Answers 202 with the run and its URLs once queued. With `Idempotency-Key`, "
    "a retry with the same key and body answers the original run (header "
    "`Idempotent-Replayed: true`); the same key with another body is a 409 problem. Keys "
    "belong to the client: an OAuth2 application, or the user. `?wait=N` (at most 60) waits "
    "up to N seconds for the run to finish or to park for a reviewer; a finished run answers "
    "200.",
    tags=["runs"],
    request=RunRequest,
    parameters=[
        OpenApiParameter(
            "Idempotency-Key",
            OpenApiTypes.STR,
            OpenApiParameter.HEADER,
            required=False,
            pattern=f"^{IDEMPOTENCY_KEY.pattern}$",
        ),
        OpenApiParameter(
            "wait",
            OpenApiTypes.INT,
            OpenApiParameter.QUERY,
            required=False,
            description="Seconds to wait for the run to settle (at most WARDEN_API_MAX_WAIT).",
        ),
    ],
    responses={200: RunAcceptedSerializer, 202: RunAcceptedSerializer},
)
class RunCreate(APIView):
    permission_classes = [HasScope]
    required_scope = "agents:run"

    def post(self, request, slug: str):
        wait = _wait_seconds(request.query_params.get("wait"))
        agent = access_agent_by_slug(request.user, slug)
        body = RunRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if wait:  # before the run: a refused request starts nothing
            wait_slot_take(request.user)
        try:
            run = run_submit(
                actor=request.user,
                agent=agent,
                input=data["input"],
                conversation=data.get("conversation"),
                idempotency_key=request.headers.get("Idempotency-Key", ""),
                surface="runs",
                client_application_id=getattr(request.auth, "application_id", None),
            )
            if wait:
                run = run_wait(run=run, timeout=wait)
        finally:
            if wait:
                wait_slot_give(request.user)
        headers = {"Location": reverse("api-run", args=[run.pk])}
        if getattr(run, "replayed", False):
            headers["Idempotent-Replayed"] = "true"
        status = 200 if run.state in FINAL_STATES else 202
        return Response(RunAcceptedSerializer(run).data, status=status, headers=headers)


def _wait_seconds(raw) -> int:
    most = settings.WARDEN_API_MAX_WAIT
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or int(raw) > most:
        raise exceptions.ValidationError({"wait": [f"a whole number of seconds, 0 to {most}"]})
    return int(raw)


class EventStreamRenderer(BaseRenderer):
    """`text/event-stream`; an error before the stream starts is still a JSON problem."""

    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return json.dumps(data).encode()


@extend_schema(
    summary="Follow a run's events (Server-Sent Events)",
    description="Each event has the run's log id as its `id`; reconnect with `Last-Event-ID` "
    "(or `?after=`) to resume after it, with nothing lost or repeated. The stream ends after "
    "the `final` event; it also ends after a few minutes of a parked run with a `reconnect` "
    "event, to be resumed, with an `error` event if the events cannot be read, and with an "
    "`error` event (`access_revoked`) within seconds of the credential being revoked or its "
    "account disabled or deleted; none has an id. A comment keeps a quiet stream alive. "
    "A run that did not stream gets what settled it only. Where the run's log was lost "
    "(Redis restarted, or a day passed), its steps and end are rebuilt from the database "
    "(ids `0-<n>`; tokens are not kept).",
    tags=["runs"],
    parameters=[
        OpenApiParameter("Last-Event-ID", str, OpenApiParameter.HEADER, required=False),
        OpenApiParameter("after", str, OpenApiParameter.QUERY, required=False),
    ],
    responses={
        (200, "text/event-stream"): OpenApiResponse(
            {
                "type": "object",
                "description": "One event: `data` is the event as JSON, `event` its type.",
                "properties": {
                    "id": {"type": "string"},
                    "event": {"type": "string"},
                    "data": {"type": "string"},
                },
            }
        )
    },
)
class RunEvents(APIView):
    permission_classes = [HasScope]
    required_scope = "runs:read"
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def get(self, request, pk: int):
        run = access_run(request.user, pk)
        after = request.headers.get("Last-Event-ID") or request.query_params.get("after") or "0-0"
        if not _STREAM_ID.fullmatch(after) or max(map(int, after.split("-"))) >= 2**64:
            raise exceptions.ValidationError({"Last-Event-ID": ["an event id this stream sent"]})
        wait_slot_take(request.user)
        response = SlotStream(
            request.user,
            run_events(
                run.pk, after, settings.WARDEN_SSE_MAX_SECONDS, AccessWatch(credential_of(request))
            ),
            content_type="text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy in front must not hold the stream
        return response


def _frame(event: dict, sid: str | None = None) -> str:
    head = f"id: {sid}\n" if sid else ""
    return f"{head}event: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"


async def run_events(run_id: int, after: str, max_seconds: float, watch: AccessWatch):
    """The run's events after `after` (agents.events.run_history: the log, or the database
    where the log was lost), then live ones, until its `final` event. Never a bare end: a
    stream that cannot go on says why in an event without an id (`reconnect` after
    `max_seconds`, `error` when Redis stays away or when `watch` says the caller's access
    ended, which it is asked before anything is sent), so the client resumes with the last id.
    A Redis connection that fails is made again and the stream goes on from the last id it
    sent (redis-py resends a command on a new connection a few times; past that, this waits
    up to REDIS_OUTAGE_SECONDS, keeping the client's connection alive)."""
    import asyncio

    from redis.exceptions import RedisError

    loop = asyncio.get_running_loop()
    state = sync_to_async(releasing(_state))
    redis = redis_client()
    deadline = loop.time() + max_seconds
    every = settings.WARDEN_LIVE_KEEPALIVE_SECONDS
    wrote, failing_since, caught_up = loop.time(), None, False
    revoked = _frame({"type": "error", "reason": "access_revoked", "detail": REVOKED_DETAIL})
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                if not caught_up:  # the start, or back after Redis failed
                    await watch.begin(redis)
                    history = await run_history(redis, run_id, after)
                    if not await watch.allowed():
                        yield revoked
                        return
                    for item in history:
                        after = last_logged([item], after)
                        yield _frame(item["event"], item["id"])
                        if item["event"].get("type") == "final":
                            return
                    caught_up, failing_since, wrote = True, None, loop.time()
                    continue
                if not await watch.allowed():  # (a deleted user's run is gone with them)
                    yield revoked
                    return
                settled = await state(run_id) in FINAL_STATES  # before reading: none is missed
                # Events reach the log a moment after the commit that ends the run (the worker
                # publishes them off its path): a finished run's log is still read briefly.
                block = FINISHED_GRACE_MS if settled else POLL_MS
                streams = {stream_key(run_id): after, **watch.streams()}
                got = watch.heard(await redis.xread(streams, count=500, block=block))
            except RedisError as exc:
                logger.warning("run %s's event stream lost Redis: %r", run_id, exc)
                failing_since = failing_since or loop.time()
                if loop.time() - failing_since > REDIS_OUTAGE_SECONDS:
                    yield _frame(
                        {
                            "type": "error",
                            "reason": "events_unavailable",
                            "detail": f"the run's events cannot be read ({exc.__class__.__name__})"
                            "; reconnect with Last-Event-ID to resume",
                        }
                    )
                    return
                caught_up = False
                yield ": reconnecting\n\n"
                await asyncio.sleep(1)
                continue
            if not await watch.allowed():
                yield revoked
                return
            for sid, fields in got[0][1] if got else ():
                after = sid.decode()
                event = json.loads(fields[b"e"])
                yield _frame(event, after)
                wrote = loop.time()
                if event.get("type") == "final":
                    return
            if settled and not got:  # the log lost it, or the final event is late
                yield _frame({"type": "final", "state": await state(run_id)})
                return
            if loop.time() > deadline:
                yield _frame(
                    {
                        "type": "reconnect",
                        "reason": "max_duration",
                        "detail": f"a stream is closed after {max_seconds:g} s; reconnect with "
                        "Last-Event-ID to go on",
                    }
                )
                return
            if loop.time() - wrote >= every:
                yield ": keep-alive\n\n"
                wrote = loop.time()
    finally:
        await redis.aclose()


def _state(run_id: int) -> str | None:
    """None once the run is gone (its owner deleted, say: the stream's access check ends it)."""
    return Run.objects.filter(pk=run_id).values_list("state", flat=True).first()


@extend_schema(
    summary="Cancel a run",
    description="A queued or parked run stops at once (200, `cancelled`); a running one at its "
    "next step (202). A finished run is left as it is (200).",
    tags=["runs"],
    request=None,
    responses={200: RunAcceptedSerializer, 202: RunAcceptedSerializer},
)
class RunCancel(APIView):
    permission_classes = [HasScope]
    required_scope = "agents:run"

    def post(self, request, pk: int):
        run = run_cancel(run=access_run(request.user, pk), actor=request.user)
        status = 200 if run.state in FINAL_STATES else 202
        return Response(RunAcceptedSerializer(run).data, status=status)
