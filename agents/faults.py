"""Which errors a run survives (DESIGN.md §4): a transient one names the dependency that failed,
and the step is retried from its last checkpoint; anything else is permanent and ends the run.

A provider that is misconfigured, refuses the request or answers with an error is permanent:
retrying it would fail the same way. Only a provider that could not be reached, or did not
answer in time, is transient (the route's own retries and fallbacks have run by then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

# Exception classes of the model providers' clients (openai's, which litellm's subclass, and
# httpx's underneath), by name: importing them here would import litellm (~2 s).
_PROVIDER_TRANSIENT = {
    ("openai", "APIConnectionError"),  # litellm.APIConnectionError and Timeout (APITimeoutError)
    ("litellm", "ServiceUnavailableError"),  # 503
    ("litellm", "BadGatewayError"),  # 502
    ("httpx", "TransportError"),  # connect errors and timeouts
}


def transient(exc: BaseException) -> str | None:
    """The dependency whose failure `exc` is ("database", "redis", "broker", "model provider"),
    if it is a transient one; None for every other error (a bug, a refusal: permanent)."""
    import kombu.exceptions
    import psycopg
    import redis.exceptions
    from django.db import InterfaceError, OperationalError

    from agents.gateway import ModelUnavailable

    if isinstance(exc, (OperationalError, InterfaceError, psycopg.OperationalError)):
        return "database"
    if isinstance(exc, psycopg.InterfaceError):
        return "database"
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return "redis"
    if isinstance(exc, kombu.exceptions.OperationalError):
        return "broker"
    if isinstance(exc, ModelUnavailable):
        return "model provider" if any(map(_provider_unreachable, _causes(exc))) else None
    return None


def _causes(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _provider_unreachable(exc: BaseException) -> bool:
    return any(
        (cls.__module__.split(".")[0], cls.__name__) in _PROVIDER_TRANSIENT
        for cls in type(exc).__mro__
    )


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): exponential from
    WARDEN_RUN_RETRY_BACKOFF_SECONDS, capped at WARDEN_RUN_RETRY_BACKOFF_MAX_SECONDS, with
    full jitter on its upper half (workers that lost the database together come back apart)."""
    first = settings.WARDEN_RUN_RETRY_BACKOFF_SECONDS
    delay = min(settings.WARDEN_RUN_RETRY_BACKOFF_MAX_SECONDS, first * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not secrecy


def failpoint(name: str) -> None:
    """Fail here when the environment asks for it (the durability tests' faults).

    WARDEN_FAILPOINT names the point; WARDEN_FAILPOINT_ONCE is a file created on the first hit,
    so the process that replaces the killed one runs on (WARDEN_FAILPOINT_ALWAYS=1: every hit).
    WARDEN_FAILPOINT_ACTION says what happens: `kill` (SIGKILL, the default) or `disconnect`
    (the worker's database connection is terminated by the server, as pg_terminate_backend or
    a restart of PostgreSQL would: the next statement fails).
    """
    if os.environ.get("WARDEN_FAILPOINT") != name:
        return
    if os.environ.get("WARDEN_FAILPOINT_ALWAYS") != "1":
        marker = os.environ.get("WARDEN_FAILPOINT_ONCE", "")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except (FileExistsError, FileNotFoundError):
            return
    if os.environ.get("WARDEN_FAILPOINT_ACTION", "kill") == "disconnect":
        from django.db import Error

        logger.warning("failpoint %s: terminating this worker's database connection", name)
        with contextlib.suppress(Error), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return
    os.kill(os.getpid(), signal.SIGKILL)
