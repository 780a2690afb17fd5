"""Rate limits and concurrency slots, counted in the project's Redis (the cache's REDIS_URL), so
that every process of every machine counts against the same limits.

A rate (`hit`) is the `limits` library's: "5/minute" or a `RateLimitItem`, counted under the
limit and the keys given (an agent, a user, a tool, a socket). A fixed window by default, as
the run and tool limits always were; a moving window where a burst must not be followed at
once by another (a websocket's frames).

A slot (`slot_take` / `slot_give`) is not a rate: it counts what is open now (long requests
held by one account), so it is given back when the thing ends, not when a window passes, which
`limits` has no operation for. It is a plain counter in the cache, expiring after `ttl` in
case a process dies holding one.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Literal

from django.conf import settings
from django.core.cache import cache
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from telemetry import metrics

Window = Literal["fixed", "moving"]


@functools.cache
def _limiter(window: Window) -> RateLimiter:
    kind = FixedWindowRateLimiter if window == "fixed" else MovingWindowRateLimiter
    return kind(_storage())


@functools.cache
def _storage() -> RedisStorage:
    url = settings.REDIS_URL
    if url.startswith("unix://"):  # the embedded Redis; `limits` names the scheme so
        url = "redis+" + url
    # A Redis that stops answering fails the caller after a few seconds, never hangs it.
    return RedisStorage(url, key_prefix="warden:limits", socket_timeout=5, socket_connect_timeout=5)


def _item(limit: str | RateLimitItem) -> RateLimitItem:
    return parse(limit) if isinstance(limit, str) else limit


def hit(limit: str | RateLimitItem, *keys: object, window: Window = "fixed") -> bool:
    """Count one more against `limit` for `keys`; False when that is past the limit (a fixed
    window counts the refused hit too, a moving one does not). A refusal is counted by its first
    key, the limit's name (telemetry.metrics.RATE_LIMIT_REFUSALS)."""
    allowed = _limiter(window).hit(_item(limit), *map(str, keys))
    if not allowed:
        metrics.RATE_LIMIT_REFUSALS.labels(limit=str(keys[0]) if keys else "?").inc()
    return allowed


def reset_in(limit: str | RateLimitItem, *keys: object, window: Window = "fixed") -> int:
    """Whole seconds until `limit` for `keys` lets a hit through again (a Retry-After), at
    least 1 and at most the limit's window."""
    item = _item(limit)
    reset = _limiter(window).get_window_stats(item, *map(str, keys)).reset_time
    return min(max(1, math.ceil(reset - time.time())), item.get_expiry())


def remaining(limit: str | RateLimitItem, *keys: object, window: Window = "fixed") -> int:
    """How many hits `limit` still allows for `keys` in the current window."""
    return _limiter(window).get_window_stats(_item(limit), *map(str, keys)).remaining


def slot_take(key: str, *, most: int, ttl: int) -> bool:
    """Take one of `most` slots under `key`; False (and nothing taken) when all are taken."""
    cache.add(key, 0, timeout=ttl)
    if cache.incr(key) > most:
        cache.decr(key)
        return False
    return True


def slot_give(key: str) -> None:
    """Give back a slot `slot_take` took."""
    with contextlib.suppress(ValueError):  # expired meanwhile: nothing to give back
        cache.decr(key)
