"""An API event stream ends when its caller's access does (issue 19, point 3).

A stream (a run's events, a streamed OpenAI-compatible completion) is authenticated once, by
the request that opens it, and may then last minutes. It remembers the credential that opened
it (a personal access token, an OAuth2 token, or a browser session) and asks again whether
that credential still admits its active user: at once when the user's access announcements
(agents.revocation) say something changed, and in any case before it sends anything, at most
WARDEN_LIVE_RECHECK_SECONDS after the last check. A stream refused so ends with an event that
says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef
from django.utils import timezone

from agents.revocation import (
    access_key,
    access_last_id,
    ended_sessions,
    recheck_seconds,
    session_digest,
    session_user,
)
from agents.selectors import releasing

REVOKED_DETAIL = "the credential or its account no longer admits this stream; sign in again"


@dataclass(frozen=True)
class Credential:
    """What authenticated a request: `kind` "token" (personal access token), "oauth2" or
    "session", and which one (`ref`: its primary key, or the session's key)."""

    user_id: int
    kind: str
    ref: str


def credential_of(request) -> Credential:
    from oauth2_provider.models import AccessToken

    from integrations.models import PersonalAccessToken

    auth, user_id = request.auth, request.user.pk
    if isinstance(auth, PersonalAccessToken):
        return Credential(user_id, "token", str(auth.pk))
    if isinstance(auth, AccessToken):
        return Credential(user_id, "oauth2", str(auth.pk))
    return Credential(user_id, "session", request.session.session_key or "")


def credential_valid(credential: Credential) -> bool:
    """Whether `credential` still admits its active user, as authentication would now (one
    query, two for a session)."""
    from oauth2_provider.models import AccessToken

    from integrations.models import PersonalAccessToken

    now = timezone.now()
    if credential.kind == "session":
        user = session_user(credential.ref)
        return user is not None and user.pk == credential.user_id
    if credential.kind == "token":
        live = PersonalAccessToken.objects.filter(
            pk=credential.ref, user=OuterRef("pk"), revoked_at__isnull=True, expires_at__gt=now
        )
    else:  # an OAuth2 token acts as its own user or as its application's (integrations.api.auth)
        live = AccessToken.objects.filter(pk=credential.ref, expires__gt=now)
    users = get_user_model().objects.filter(pk=credential.user_id, is_active=True)
    return users.filter(Exists(live)).exists()


class AccessWatch:
    """A stream's view of its caller's access. The stream reads `streams()` beside its own
    log in one XREAD, hands the reply to `heard`, and asks `allowed()` before each send."""

    def __init__(self, credential: Credential) -> None:
        self.credential = credential
        self.key = access_key(credential.user_id)
        self.after: str | None = None
        self.every = recheck_seconds()
        self.checked_at = time.monotonic()
        self.due = True  # the first check follows the first read of the announcements
        self.ended = False

    async def begin(self, redis) -> None:
        """Where the announcements are read from: after the last one. The check that follows
        covers whatever changed before it."""
        if self.after is None:
            self.after = await access_last_id(redis, self.credential.user_id)

    def streams(self) -> dict[str, str]:
        return {self.key: self.after} if self.after is not None else {}

    def heard(self, found) -> list:
        """`found` (an XREAD reply) without the announcements, which are taken note of."""
        rest = []
        for key, entries in found or ():
            if (key.decode() if isinstance(key, bytes) else key) != self.key:
                rest.append((key, entries))
                continue
            self.after = entries[-1][0].decode()
            self.due = True
            mine = session_digest(self.credential.ref) if self.credential.kind == "session" else ""
            if mine and mine in ended_sessions(entries):
                self.ended = True  # that sign-in ended: no need to ask
        return rest

    async def allowed(self) -> bool:
        if self.ended:
            return False
        if not self.due and time.monotonic() - self.checked_at < self.every:
            return True
        self.ended = not await sync_to_async(releasing(credential_valid))(self.credential)
        self.checked_at, self.due = time.monotonic(), False
        return not self.ended
