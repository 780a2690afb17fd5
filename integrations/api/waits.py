"""How many long requests one account may hold open at once: `?wait`, a run's event stream,
an OpenAI-compatible completion. Each holds a server thread or a connection for up to minutes,
so the per-minute throttle is not enough; past WARDEN_API_MAX_WAITS the next one is a 429."""

from __future__ import annotations

from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework import exceptions

from governance import ratelimits

# A slot lost with a killed process is given back by the key's expiry.
TTL_SECONDS = 3600


def _key(user) -> str:
    return f"api-waits:{user.pk}"


def wait_slot_take(user) -> None:
    """Take one of the account's slots, or raise Throttled (429)."""
    most = settings.WARDEN_API_MAX_WAITS
    if not ratelimits.slot_take(_key(user), most=most, ttl=TTL_SECONDS):
        raise exceptions.Throttled(
            wait=1, detail=f"at most {most} waiting requests or event streams at once per account."
        )


def wait_slot_give(user) -> None:
    ratelimits.slot_give(_key(user))


class SlotStream(StreamingHttpResponse):
    """A stream that holds one of `user`'s slots (taken before) until it is closed, whenever
    that is: a client gone before the first byte included. The server calls
    `HttpResponse.close()` at the end of every request, as Django documents."""

    def __init__(self, user, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slot_holder = user

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.slot_holder is not None:  # once, however often it is closed
                user, self.slot_holder = self.slot_holder, None
                wait_slot_give(user)
