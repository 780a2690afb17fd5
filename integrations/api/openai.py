"""The OpenAI-compatible surface: `POST /v1/chat/completions` and `GET /v1/models`.

An OpenAI client (the official SDK, or anything that speaks the protocol) drives Warden's agents
as models named `agent:<slug>`. Every request is a run started through the chat's front door
(agents.submit.run_submit), so the message's rules, access, rate limits, budgets, guardrails,
policy, approvals and the audit trail are the chat's own.

- Conversation: each request starts a new conversation whose run's input is the last message
  (it must be the user's). Earlier messages are ignored: the agent keeps its own system prompt
  and history. To continue a Warden conversation, send `"conversation": <id>` (the `warden`
  member of an earlier answer names it; `extra_body` in the SDK).
- `Idempotency-Key`: the same key (per client) answers with the run it started before.
- Waiting: the view follows the run's event stream in Redis (agents.events; a run that does
  not stream still logs the events that end or park it) until the run
  ends or parks, checking the database (the truth) on each decisive event and every
  `WAIT_POLL_SECONDS`. A run parked for a reviewer, or still going after
  `WARDEN_OPENAI_WAIT_SECONDS`, answers at once: a message saying so, with the run's API URL,
  and a `warden` member {run, state, conversation, url}; the run carries on without the caller.
  A non-streaming request holds its thread (not its database connection) while it waits
  (Django gives each ASGI request its own thread, and the middleware chain is synchronous
  anyway); a streaming one waits on the event loop.
- Errors are problem documents (integrations.api.problems) that also carry OpenAI's `error` member
  ({message, type, param, code}), which the SDK turns into its exceptions; a refusal's type
  and code are those integrations.api.problems.ANSWERS gives it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Max
from django.http import HttpRequest
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.events import stream_key
from agents.models import Run, RunState, RunStep, StepKind
from agents.selectors import (
    SETTLED,
    WAIT_POLL_SECONDS,
    access_agent_by_slug,
    agents_usable_by,
    releasing,
    run_current,
    run_decisive,
    run_settled,
    run_wait,
)
from agents.submit import run_submit
from governance.access import NoAccess
from governance.live import shared_redis_client
from integrations.api.auth import HasScope
from integrations.api.parsers import unstorable
from integrations.api.problems import exception_handler, problem_body, refusal
from integrations.api.streams import REVOKED_DETAIL, AccessWatch, credential_of
from integrations.api.waits import SlotStream, wait_slot_give, wait_slot_take

PREFIX = "agent:"

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def wait_seconds() -> float:
    return float(settings.WARDEN_OPENAI_WAIT_SECONDS)


# Errors ------------------------------------------------------------------------------------


class ModelNotFound(exceptions.NotFound):
    openai = ("invalid_request_error", "model_not_found")


class Invalid(exceptions.ValidationError):
    """One field is wrong: OpenAI's `param` names it."""

    openai = ("invalid_request_error", "invalid_request")

    def __init__(self, param: str, message: str):
        super().__init__({param: [message]})
        self.param, self.message = param, message


_KINDS = [
    (exceptions.NotAuthenticated, "authentication_error", "invalid_api_key"),
    (exceptions.AuthenticationFailed, "authentication_error", "invalid_api_key"),
    (exceptions.PermissionDenied, "permission_error", "forbidden"),
    (exceptions.NotFound, "invalid_request_error", "not_found"),
    (exceptions.Throttled, "rate_limit_error", "rate_limit_exceeded"),
    (exceptions.APIException, "invalid_request_error", None),
]


# The run's input, as this surface names it: the last of OpenAI's messages.
_PARAMS = {"input": "messages"}


def openai_exception_handler(exc, context):
    """The API's problem document, with OpenAI's `error` member beside it: for a domain error
    as integrations.api.problems.ANSWERS says, for the rest by the exception's kind."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    if (refused := refusal(exc)) is not None:
        (kind, code), param = refused.answer.openai, _PARAMS.get(refused.answer.field or "")
        message = refused.detail
        if "errors" in refused.extra:
            message = f"{message}: {json.dumps(refused.extra['errors'])}"
    else:
        kind, code = getattr(exc, "openai", None) or next(
            (k, c) for cls, k, c in _KINDS if isinstance(exc, cls)
        )
        code, param = code or exc.default_code, getattr(exc, "param", None)
        message = getattr(exc, "message", None) or response.data["detail"]
        if isinstance(exc, exceptions.ValidationError) and not isinstance(exc, Invalid):
            message = f"{message}: {json.dumps(exc.detail)}"
    response.data["error"] = {"message": message, "type": kind, "param": param, "code": code}
    return response


def _error_body(request, status: int, slug, message: str, kind: str, code: str, **extra):
    error = {"message": message, "type": kind, "param": None, "code": code}
    return problem_body(request, status, slug, message, error=error, **extra)


class OpenAIView(APIView):
    permission_classes = [HasScope]
    required_scope = "agents:run"

    def get_exception_handler(self):
        return openai_exception_handler


# GET /v1/models ----------------------------------------------------------------------------


def _model(agent) -> dict:
    # Agents keep no creation time; OpenAI's field is required, so it says "unknown" as 0.
    return {"id": f"{PREFIX}{agent.slug}", "object": "model", "created": 0, "owned_by": "warden"}


class ModelList(OpenAIView):
    @extend_schema(
        summary="The agents the caller may use, as OpenAI models (`agent:<slug>`)",
        tags=["openai"],
        operation_id="openai_models_list",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request):
        agents = agents_usable_by(request.user).order_by("slug").only("slug")
        return Response({"object": "list", "data": [_model(a) for a in agents]})


class ModelDetail(OpenAIView):
    @extend_schema(
        summary="One agent the caller may use, as an OpenAI model",
        tags=["openai"],
        operation_id="openai_models_retrieve",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request, model: str):
        return Response(_model(_agent(request.user, model)))


def _agent(user, model):
    """The agent the model name means, if `user` may use it; else model_not_found."""
    slug = model[len(PREFIX) :] if isinstance(model, str) and model.startswith(PREFIX) else None
    if slug:
        try:
            return access_agent_by_slug(user, slug)
        except NoAccess:
            pass
    raise ModelNotFound(
        f"The model {model!r} does not exist or you do not have access to it; "
        f"Warden's models are the agents you may use, named {PREFIX}<slug> (GET /v1/models)"
    )


# POST /v1/chat/completions -----------------------------------------------------------------


@dataclass
class Ask:
    model: str
    input: str
    stream: bool = False
    include_usage: bool = False
    conversation: int | None = None


def _text(content, n: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Invalid(f"messages[{n}].content", "only text content parts are supported")
            if not isinstance(part.get("text"), str):
                raise Invalid(f"messages[{n}].content", "a text part needs a string `text`")
            parts.append(part["text"])
        return "\n".join(parts)
    raise Invalid(f"messages[{n}].content", "content must be a string or a list of text parts")


def _ask(data) -> Ask:
    if not isinstance(data, dict):
        raise Invalid("body", "the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("model", "`model` is required: an agent, as agent:<slug>")
    if len(model) > 200 or unstorable(model):
        raise Invalid("model", "`model` names an agent, as agent:<slug>")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages", "`messages` must be a non-empty list")
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLES:  # (a list as role is not hashable)
            raise Invalid(f"messages[{n}]", "each message needs a known `role`")
    last = messages[-1]
    if last["role"] != "user":
        raise Invalid("messages", "the last message must be the user's: it is the agent's input")
    text = _text(last.get("content"), len(messages) - 1)  # its rules: agents.submit's
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise Invalid("stream", "`stream` must be true or false")
    if data.get("n", 1) not in (1, None):
        raise Invalid("n", "an agent gives one answer: `n` must be 1")
    if data.get("tools") or data.get("functions"):
        raise Invalid("tools", "agents call their own governed tools; `tools` is not accepted")
    options = data.get("stream_options") or {}
    conversation = data.get("conversation")
    if conversation is not None and (type(conversation) is not int or conversation < 1):
        raise Invalid("conversation", "`conversation` must be a Warden conversation id")
    return Ask(
        model=model,
        input=text,
        stream=stream,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        conversation=conversation,
    )


class ChatCompletions(OpenAIView):
    @extend_schema(
        summary="Run an agent as an OpenAI chat completion (`agent:<slug>`), streaming or not",
        tags=["openai"],
        operation_id="openai_chat_completions",
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request):
        ask = _ask(request.data)
        wait_slot_take(request.user)  # before the run: a refused request starts nothing
        try:
            run = _start(request, ask)
            if ask.stream:
                watch = AccessWatch(credential_of(request))
                events = _events(request, run, ask, watch)
                response = SlotStream(request.user, events, content_type="text/event-stream")
                response["Cache-Control"] = "no-cache"
                response["X-Accel-Buffering"] = "no"
                return response
            done = run_wait(run=run, timeout=wait_seconds())
        except BaseException:
            wait_slot_give(request.user)
            raise
        wait_slot_give(request.user)
        status, body = _answer(request, done, ask)
        if status == 200:
            return Response(body, status=status, content_type="application/json")
        # How the run stands is its answer: a retry would start (and spend on) another run,
        # so the SDK, which retries 409 and 5xx by itself, is told not to.
        headers = {"x-should-retry": "false", "Location": body["warden"]["url"]}
        return Response(body, status, headers=headers, content_type="application/problem+json")


def _start(request, ask: Ask) -> Run:
    return run_submit(
        actor=request.user,
        agent=_agent(request.user, ask.model),
        input=ask.input,
        conversation=ask.conversation,
        idempotency_key=request.headers.get("Idempotency-Key", ""),
        surface="openai",
        client_application_id=getattr(request.auth, "application_id", None),
        # Tokens are published only for a streamed answer; every run publishes the events
        # that settle it, which is what a non-streamed request's wait wakes on.
        stream=ask.stream,
        here=True,  # the request waits: a run that can only answer is advanced here
    )


# Following a run ---------------------------------------------------------------------------


@dataclass
class Tokens:
    """What has been streamed of the answer. Tokens carry the run's fencing token (`attempt`):
    once a later attempt starts, what an earlier one streamed is void, so streaming stops and
    the final answer is sent whole after a note."""

    attempt: int = 0
    step: int | None = None
    text: dict[int, str] = field(default_factory=dict)  # by step, of `attempt`
    sent: bool = False
    void: bool = False

    def take(self, event: dict) -> str:
        """The text to send for a token event ('' for none)."""
        attempt, step, text = event.get("attempt", 0), event.get("step", 0), event["text"]
        if self.void or attempt < self.attempt:
            return ""
        if attempt > self.attempt:
            if self.sent:
                self.void = True
                return ""
            self.attempt, self.text = attempt, {}
        prefix = "\n\n" if self.sent and step != self.step and step not in self.text else ""
        self.step = step
        self.text[step] = self.text.get(step, "") + text
        self.sent = True
        return prefix + text

    def rest(self, answer: str, step: int | None) -> str:
        """What remains to send of the final answer, the model's step `step`."""
        streamed = self.text.get(step, "") if step is not None else ""
        if self.void:
            return f"\n\n(The answer restarted after an interruption; in full:)\n\n{answer}"
        if streamed and answer.startswith(streamed):
            return answer[len(streamed) :]
        if self.sent:
            return f"\n\n{answer}"
        return answer


def _final_step(run_id: int) -> int | None:
    found = RunStep.objects.filter(run_id=run_id, kind=StepKind.MODEL).aggregate(last=Max("index"))
    return found["last"]


async def _events(request: HttpRequest, run: Run, ask: Ask, watch: AccessWatch):
    """The SSE stream: the answer's tokens as they come, then the end (or the error). Before
    anything is sent, `watch` is asked whether the caller's access still holds; once not, the
    stream ends with an error (an `authentication_error`, as OpenAI's for a revoked key)."""
    import redis

    base = {
        "id": f"chatcmpl-warden-{run.pk}",
        "object": "chat.completion.chunk",
        "created": int(run.created_at.timestamp()),
        "model": ask.model,
    }

    def chunk(delta: dict, finish=None, **extra) -> bytes:
        body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps({**body, **extra})}\n\n".encode()

    revoked = {
        "error": {
            "message": REVOKED_DETAIL,
            "type": "authentication_error",
            "code": "access_revoked",
        }
    }
    yield chunk({"role": "assistant", "content": ""})
    tokens = Tokens()
    settled = run if run.state in SETTLED else None
    client, key, last = shared_redis_client(), stream_key(run.pk), "0-0"
    deadline = time.monotonic() + wait_seconds()
    check = False
    while settled is None:
        if check and (settled := await sync_to_async(releasing(run_settled))(run.pk)) is not None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            settled = await sync_to_async(releasing(run_current))(run.pk)
            break
        try:
            block = max(1, int(min(left, WAIT_POLL_SECONDS) * 1000))
            await watch.begin(client)
            found = watch.heard(await client.xread({key: last, **watch.streams()}, block=block))
        except redis.RedisError:
            import asyncio

            await asyncio.sleep(min(left, WAIT_POLL_SECONDS))
            found = []
        if not await watch.allowed():
            yield f"data: {json.dumps(revoked)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            return
        check = not found
        for _, entries in found:
            for sid, fields in entries:
                last = sid
                event = json.loads(fields[b"e"])
                if event.get("type") == "token" and (text := tokens.take(event)):
                    yield chunk({"content": text})
                check = check or run_decisive(event)
    if not await watch.allowed():  # the answer, too, is only for who may still have it
        yield f"data: {json.dumps(revoked)}\n\n".encode()
        yield b"data: [DONE]\n\n"
        return
    warden = _warden(request, settled)
    if settled.state == RunState.SUCCEEDED:
        rest = tokens.rest(settled.answer, await sync_to_async(_final_step)(run.pk))
        if rest:
            yield chunk({"content": rest})
        yield chunk({}, "stop", warden=warden)
        if ask.include_usage:
            usage = {**base, "choices": [], "usage": _usage(settled), "warden": warden}
            yield f"data: {json.dumps(usage)}\n\n".encode()
    else:
        _, body = _answer(request, settled, ask)
        yield f"data: {json.dumps({'error': body['error'], 'warden': warden})}\n\n".encode()
    yield b"data: [DONE]\n\n"


# Answers -----------------------------------------------------------------------------------


def _warden(request, run: Run) -> dict:
    return {
        "run": run.pk,
        "state": str(run.state),
        "conversation": run.conversation_id,
        "url": request.build_absolute_uri(reverse("api-run", args=[run.pk])),
    }


def _notice(run: Run, url: str) -> str:
    """What a caller reads when the run has not ended: it waits for somebody, or takes long."""
    if run.state == RunState.AWAITING_APPROVAL:
        return (
            f"Run {run.pk} is waiting for a reviewer to approve a tool call; it continues once "
            f"they decide. Its state and answer: {url}"
        )
    if run.state == RunState.AWAITING_REVIEW:
        return (
            f"Run {run.pk}'s answer is held for a reviewer; it is released once they decide. "
            f"Its state and answer: {url}"
        )
    return (
        f"Run {run.pk} is still {run.state} after {wait_seconds():g} seconds; it carries on. "
        f"Its state and answer: {url}"
    )


def _usage(run: Run) -> dict:
    return {
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "total_tokens": run.prompt_tokens + run.completion_tokens,
    }


# An ended run that did not succeed: (status, problem slug, OpenAI type, code).
_ENDED: dict[str, tuple[int, str | None, str, str]] = {
    RunState.FAILED: (502, None, "server_error", "run_failed"),
    RunState.REJECTED: (403, "forbidden", "permission_error", "run_rejected"),
    RunState.CANCELLED: (409, None, "invalid_request_error", "run_cancelled"),
}


# A run without an answer yet (parked for a person, or past the wait): an error, so that no
# client takes the notice for the answer; 409 (the run's state does not allow an answer now),
# with `x-should-retry: false` for the SDK, which retries 409s.
_PENDING: dict[str, str] = {
    RunState.AWAITING_APPROVAL: "run_awaiting_approval",
    RunState.AWAITING_REVIEW: "run_awaiting_review",
}


def _answer(request, run: Run, ask: Ask) -> tuple[int, dict]:
    warden = _warden(request, run)
    if run.state in _ENDED:
        status, slug, kind, code = _ENDED[run.state]
        message = f"run {run.pk} {run.state}: {run.error or 'no reason was recorded'}"
        return status, _error_body(request, status, slug, message, kind, code, warden=warden)
    if run.state != RunState.SUCCEEDED:
        code = _PENDING.get(run.state, "run_in_progress")
        notice = _notice(run, warden["url"])
        return 409, _error_body(
            request, 409, "run-pending", notice, "invalid_request_error", code, warden=warden
        )
    return 200, {
        "id": f"chatcmpl-warden-{run.pk}",
        "object": "chat.completion",
        "created": int(run.created_at.timestamp()),
        "model": ask.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": run.answer},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(run),
        "warden": warden,
    }
