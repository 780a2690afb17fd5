"""How many long requests one account may hold open at once: `?wait`, a run's event stream,
an OpenAI-compatible completion. Each holds a server thread or a connection for up to minutes,
so the per-minute throttle is not enough; past WARDEN_API_MAX_WAITS the next one is a 429."""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions

# A slot lost with a killed process is given back by the key's expiry.
TTL_SECONDS = 3600


def _key(user) -> str:
    return f"api-waits:{user.pk}"


def wait_slot_take(user) -> None:
    """Take one of the account's slots, or raise Throttled (429)."""
    key, most = _key(user), settings.WARDEN_API_MAX_WAITS
    cache.add(key, 0, timeout=TTL_SECONDS)
    if cache.incr(key) > most:
        cache.decr(key)
        raise exceptions.Throttled(
            wait=1, detail=f"at most {most} waiting requests or event streams at once per account."
        )


def wait_slot_give(user) -> None:
    with contextlib.suppress(ValueError):  # expired meanwhile: nothing to give back
        cache.decr(_key(user))


def wait_slot_for(response, user):
    """Give the slot back when `response` (a stream) is closed, whenever that is: a client
    gone before the first byte included. This uses the list Django itself calls from
    `HttpResponse.close()` (private, but the only hook there is)."""
    response._resource_closers.append(lambda: wait_slot_give(user))
    return response
