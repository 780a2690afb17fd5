"""Errors as RFC 9457 problem documents, with stable type URIs (`/api/problems/<slug>`, each
of which describes itself when fetched)."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from telemetry import metrics

# slug -> (title, what it means, what to do)
PROBLEMS: dict[str, tuple[str, str]] = {
    "not-authenticated": (
        "Not authenticated",
        "The request carries no valid credentials: send an OAuth2 bearer token (client "
        "credentials at /o/token/) or a personal access token, or sign in.",
    ),
    "forbidden": (
        "Forbidden",
        "The credentials are valid but may not do this: the token lacks the scope the "
        "endpoint requires, or the account lacks the permission.",
    ),
    "not-found": (
        "Not found",
        "There is no such resource, or it is not yours to see: Warden answers both the same.",
    ),
    "method-not-allowed": ("Method not allowed", "The resource does not accept this method."),
    "not-acceptable": ("Not acceptable", "The API answers in JSON only."),
    "unsupported-media-type": ("Unsupported media type", "Send JSON."),
    "malformed": ("Malformed request", "The body could not be parsed."),
    "too-large": ("Body too large", "The request body is larger than Warden accepts."),
    "invalid-cursor": (
        "Invalid cursor",
        "The `cursor` query parameter is not one Warden wrote: follow a page's `next` or "
        "`previous` link as it is, or leave `cursor` out for the first page.",
    ),
    "unreadable-input": (
        "Unreadable input",
        "The path, query string or body holds text Warden cannot keep or read: a NUL "
        "character, an unpaired surrogate, or bytes that are not UTF-8. `detail` says where.",
    ),
    "invalid": (
        "Invalid request",
        "The request was understood but some fields are wrong: `errors` says which.",
    ),
    "conflict": (
        "Conflict",
        "The resource is no longer in a state that allows this, such as an approval already "
        "decided: fetch it again to see its state.",
    ),
    "throttled": ("Too many requests", "Slow down: `Retry-After` says when to try again."),
    "second-factor-required": (
        "Second factor required",
        "The session signed in with a password but has not given its second factor yet: "
        "finish signing in in the browser, or authenticate with a token instead.",
    ),
    "policy-denied": (
        "Refused by policy",
        "Governance refused the request: the account may not use the agent, the agent is "
        "disabled, a budget is spent, data residency forbids it, or a guardrail blocked the "
        "input. `detail` says which, in words; `reasons` lists the policy's reason codes.",
    ),
    "idempotency-conflict": (
        "Idempotency key reused",
        "The Idempotency-Key was used before by this client with a different request body. "
        "Use a new key for a new request; `run` is the run the key started.",
    ),
    "run-refused": (
        "Run refused",
        "The run could not be started as asked (an empty message, say): `detail` says why.",
    ),
    "run-pending": (
        "Run not finished",
        "The run has no answer yet: a tool call waits for a reviewer's approval "
        "(`run_awaiting_approval`), its answer is held for a reviewer "
        "(`run_awaiting_review`), or it is still working (`run_in_progress`). It carries "
        "on: `warden.url` (and the `Location` header) is the run, whose webhook or `GET` says "
        "the rest; the same request with the same `Idempotency-Key` answers as the run stands.",
    ),
    "evaluation-refused": (
        "Evaluation refused",
        "The evaluation could not be started as asked (its set has no case yet, say): "
        "`detail` says why.",
    ),
    "server-error": ("Internal error", "Warden failed; the request id identifies it in logs."),
}

_BY_EXCEPTION = [
    (exceptions.NotAuthenticated, "not-authenticated"),
    (exceptions.AuthenticationFailed, "not-authenticated"),
    (exceptions.PermissionDenied, "forbidden"),
    (exceptions.NotFound, "not-found"),
    (exceptions.MethodNotAllowed, "method-not-allowed"),
    (exceptions.NotAcceptable, "not-acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported-media-type"),
    (exceptions.ParseError, "malformed"),
    (exceptions.ValidationError, "invalid"),
    (exceptions.Throttled, "throttled"),
]


class Conflict(exceptions.APIException):
    status_code = 409
    default_detail = "the resource's state does not allow this"
    default_code = "conflict"


class InvalidCursor(exceptions.APIException):
    status_code = 400
    default_detail = "the cursor is not valid"
    default_code = "invalid_cursor"


_BY_EXCEPTION += [(Conflict, "conflict"), (InvalidCursor, "invalid-cursor")]


def problem_body(request: HttpRequest, status: int, slug: str | None, detail: str, **extra) -> dict:
    """The document; with no `slug`, the plain `about:blank` kind (the status says it all)."""
    title = PROBLEMS[slug][0] if slug in PROBLEMS else HTTPStatus(status).phrase
    return {
        "type": f"/api/problems/{slug}" if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
        **extra,
    }


def problem_response(request: HttpRequest, status: int, slug: str | None, detail: str, **extra):
    return JsonResponse(
        problem_body(request, status, slug, detail, **extra),
        status=status,
        content_type="application/problem+json",
    )


@dataclass(frozen=True)
class Answer:
    """How every surface answers one kind of domain error: the status, the problem type, and
    OpenAI's error type and code; `field` is the request field it is about, if any (a
    problem of type `invalid` files the message under it, OpenAI's `param` names it)."""

    status: int
    slug: str
    openai: tuple[str, str]
    field: str | None = None


_INPUT = Answer(400, "run-refused", ("invalid_request_error", "invalid_request"), "input")
_DENIED = 403, "policy-denied"

# The services' own exceptions (they never import DRF), by their stable code
# (agents.services.RunError's kinds; governance's NoAccess is `not_found`).
ANSWERS: dict[str, Answer] = {
    "not_found": Answer(404, "not-found", ("invalid_request_error", "not_found")),
    "conversation_not_found": Answer(
        404, "not-found", ("invalid_request_error", "conversation_not_found")
    ),
    "agent_forbidden": Answer(404, "not-found", ("invalid_request_error", "model_not_found")),
    "input_refused": _INPUT,
    "input_empty": _INPUT,
    "input_too_long": _INPUT,
    "input_unstorable": _INPUT,
    "idempotency_key_invalid": Answer(
        400, "invalid", ("invalid_request_error", "invalid"), "Idempotency-Key"
    ),
    "idempotency_conflict": Answer(
        409, "idempotency-conflict", ("invalid_request_error", "idempotency_key_reused")
    ),
    "rate_limited": Answer(429, "throttled", ("rate_limit_error", "rate_limit_exceeded")),
    "policy_denied": Answer(*_DENIED, ("permission_error", "policy_denied")),
    "budget_exhausted": Answer(*_DENIED, ("permission_error", "budget_exhausted")),
    "guardrail_blocked": Answer(*_DENIED, ("permission_error", "guardrail_blocked")),
    "run_refused": Answer(400, "run-refused", ("invalid_request_error", "invalid_request")),
    # An MCP client's tool call whose arguments do not fit the tool (agents.calls; the MCP
    # server answers it as a failed call, the MCP way, but it is a refusal like the others).
    "arguments_invalid": Answer(400, "invalid", ("invalid_request_error", "invalid"), "arguments"),
    # Feedback on an answer (agents.feedback) and asking again (agents.regenerate).
    "run_unanswered": Answer(409, "conflict", ("invalid_request_error", "conflict")),
    "rating_invalid": Answer(400, "invalid", ("invalid_request_error", "invalid"), "rating"),
    "comment_invalid": Answer(400, "invalid", ("invalid_request_error", "invalid"), "comment"),
    "run_not_regenerable": Answer(409, "conflict", ("invalid_request_error", "conflict")),
    # An evaluation that cannot start as asked (agents.evaluation.services.EvaluationError).
    "evaluation_refused": Answer(
        400, "evaluation-refused", ("invalid_request_error", "invalid_request")
    ),
}


@dataclass(frozen=True)
class Refusal:
    """A domain error as answered: its `answer`, the problem's detail and extra members, and
    the response's headers."""

    answer: Answer
    detail: str
    extra: dict[str, Any]
    headers: dict[str, str]


def refusal(exc: BaseException) -> Refusal | None:
    """The answer to a domain error; None for any other exception."""
    from agents.evaluation.services import EvaluationError
    from agents.services import IdempotencyConflict, RateLimited, RunDenied, RunError
    from governance.access import NoAccess

    if isinstance(exc, NoAccess):
        code = "not_found"
    elif isinstance(exc, RunError):
        code = exc.code
    elif isinstance(exc, EvaluationError):
        code = "evaluation_refused"
    else:
        return None
    answer = ANSWERS[code]
    detail = str(exc)
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if answer.slug == "invalid" and answer.field:
        detail, extra["errors"] = "some fields are invalid", {answer.field: [str(exc)]}
    if isinstance(exc, RunDenied) and answer.slug == "policy-denied":
        extra["reasons"] = list(exc.decision.reasons)
    if isinstance(exc, IdempotencyConflict):
        extra["run"] = f"/api/v1/runs/{exc.run.pk}"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    return Refusal(answer, detail, extra, headers)


class TooLarge(exceptions.APIException):
    status_code = 413


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every API error as a problem document."""
    if isinstance(exc, RequestDataTooBig):  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = TooLarge(f"the body is larger than {limit} bytes")
        return _problem(exc, context["request"], "too-large", str(exc.detail), {})
    if (refused := refusal(exc)) is not None:
        status, slug = refused.answer.status, refused.answer.slug
        return _answer(
            context["request"], status, slug, refused.detail, refused.extra, refused.headers
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django's 500 handler answers (also as a problem, for the API)
    slug = next((s for kind, s in _BY_EXCEPTION if isinstance(exc, kind)), "error")
    if isinstance(exc, exceptions.Throttled):  # DRF's per-account rates, the waits' slots
        metrics.RATE_LIMIT_REFUSALS.labels(limit="api").inc()
    extra = {}
    if isinstance(exc, exceptions.ValidationError):
        detail = "some fields are invalid"
        extra["errors"] = exc.detail
    else:
        detail = str(exc.detail)
    return _problem(exc, context["request"], slug, detail, extra)


def _problem(exc, request, slug: str, detail: str, extra: dict) -> Response:
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(int(exc.wait))
    return _answer(request, exc.status_code, slug, detail, extra, headers)


def _answer(request, status: int, slug: str, detail: str, extra: dict, headers: dict) -> Response:
    set_rollback()
    return Response(
        problem_body(request, status, slug, detail, **extra),
        status=status,
        headers=headers,
        content_type="application/problem+json",
    )
