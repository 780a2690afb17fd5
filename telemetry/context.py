"""What the work in hand is (the request, the run, the user), for log lines and metrics: context
variables, so a thread or task sets its own and an asyncio task inherits its caller's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.utils.functional import SimpleLazyObject, empty

run_id: ContextVar[int | None] = ContextVar("warden_run_id", default=None)
request: ContextVar[Any] = ContextVar("warden_request", default=None)


@contextlib.contextmanager
def serving(http_request: Any) -> Iterator[None]:
    """Log lines in the block belong to `http_request` (and name its `request_id`)."""
    token = request.set(http_request)
    try:
        yield
    finally:
        request.reset(token)


def request_id() -> str:
    """The id of the request being served (ops.requestid), or ""."""
    return getattr(request.get(), "request_id", "")


def user_id() -> int | None:
    """The signed-in user of the request being served, if it is known by now: never a lookup
    (a log line is no reason for a query), so None until authentication has run."""
    current = request.get()
    if current is None:
        return None
    user = getattr(current, "_cached_user", None)  # the session's, once read
    if user is None:
        user = current.__dict__.get("user")  # an API token's, set by DRF
        if isinstance(user, SimpleLazyObject):
            wrapped = user.__dict__["_wrapped"]
            user = None if wrapped is empty else wrapped
    return user.pk if user is not None and user.is_authenticated else None


@contextlib.contextmanager
def working_on(*, run: int) -> Iterator[None]:
    """Log lines in the block name run `run`."""
    token = run_id.set(run)
    try:
        yield
    finally:
        run_id.reset(token)
