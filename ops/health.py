"""Liveness (/healthz) and readiness (/readyz) probes, and the metrics scrape (/metrics).

They are answered by the first middleware, before host validation, HTTPS redirection, sessions
and authentication: load balancers probe (and Prometheus scrapes) by IP address over plain
HTTP, and a probe must not depend on the session store it is meant to check. They reveal only
which check failed, never the error text (that goes to the log).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0


class ProbeFailed(Exception):
    """A readiness check failed; the message is a short, public reason, the cause the detail."""


def _database_query(sql: str) -> tuple | None:
    """Run `sql` on a connection of its own, all of it (connect included) within PROBE_TIMEOUT.

    Not Django's connection: libpq's connect_timeout is at least 2 s and covers only the
    connect, while a server that is stopped (SIGSTOP, a frozen host) or still recovering must
    make the probe fail within its second, not hang it (probes are serialised: one hung check
    would hang them all). Cancelling the asyncio task closes the socket.
    """
    import psycopg

    params = connection.get_connection_params()
    for key in ("context", "cursor_factory", "prepare_threshold"):  # Django's sync-only extras
        params.pop(key, None)

    async def query() -> tuple | None:
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as db:
            cursor = await db.execute(sql)
            return await cursor.fetchone()

    async def bounded() -> tuple | None:
        return await asyncio.wait_for(query(), PROBE_TIMEOUT)

    return asyncio.run(bounded())


def check_database() -> None:
    try:
        _database_query("SELECT 1")
    except Exception as exc:
        raise ProbeFailed("unreachable") from exc


def check_pgvector() -> None:
    try:
        row = _database_query("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    except Exception as exc:
        raise ProbeFailed("database unreachable") from exc
    if row is None:
        raise ProbeFailed("extension not installed")


def check_redis() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=PROBE_TIMEOUT,
        socket_timeout=PROBE_TIMEOUT,
        retry=Retry(NoBackoff(), 0),  # redis-py retries thrice with backoff: 3.5 s when down
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ProbeFailed("unreachable") from exc
    finally:
        client.close()


def check_celery() -> None:
    from config.celery import app

    try:
        replies = app.control.ping(timeout=PROBE_TIMEOUT, limit=1)
    except Exception as exc:
        raise ProbeFailed("broker unreachable") from exc
    if not replies:
        raise ProbeFailed("no worker answered")


_cache_lock = threading.Lock()
_cached: tuple[float, dict[str, str]] | None = None


def readiness_cached() -> dict[str, str]:
    """`readiness()`, reused for WARDEN_READY_CACHE_SECONDS: the probe needs no login, and each
    check costs a database connection and a Celery ping that may wait a second, so a flood of
    probes must not become a flood of those (concurrent probes share one run)."""
    global _cached
    ttl = settings.READY_CACHE_SECONDS
    with _cache_lock:
        if _cached is None or time.monotonic() - _cached[0] >= ttl:
            _cached = (time.monotonic(), readiness())
        return _cached[1]


def readiness() -> dict[str, str]:
    """Run every check; map each name to "ok" or its failure reason."""
    results: dict[str, str] = {}
    for name, check in (
        ("database", check_database),
        ("pgvector", check_pgvector),
        ("redis", check_redis),
        ("celery", check_celery),
    ):
        if name == "pgvector" and results["database"] != "ok":
            results[name] = "database unreachable"
            continue
        if name == "celery" and results["redis"] != "ok":
            results[name] = "broker unreachable"
            continue
        try:
            check()
        except ProbeFailed as exc:
            logger.warning("readiness: %s: %s (%s)", name, exc, exc.__cause__ or "no detail")
            results[name] = str(exc)
        else:
            results[name] = "ok"
    if results["celery"] != "ok" and results["redis"] == "ok":
        # The Celery ping waits up to a second on the broker: Redis may have gone in the
        # meantime (and a supervisor may bring it back as fast). Ask again, so the probe names
        # the dependency that failed rather than only the workers that could not answer.
        try:
            check_redis()
        except ProbeFailed as exc:
            results["redis"] = str(exc)
    return results


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


class ProbeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path not in ("/healthz", "/readyz", "/metrics"):
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if request.path == "/metrics":  # scraped by address too; its own access check
            from ops.metrics import metrics_view

            return _no_store(metrics_view(request))
        if request.path == "/healthz":
            return _no_store(JsonResponse({"status": "ok"}))
        checks = readiness_cached()
        failed = [name for name, result in checks.items() if result != "ok"]
        body = {"status": "fail" if failed else "ok", "checks": checks, "failed": failed}
        return _no_store(JsonResponse(body, status=503 if failed else 200))
