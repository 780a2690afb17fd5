"""Open live channels lose a user whose access ends (issue 19, point 3).

A websocket (agents.consumers) and an event stream (the API's run events, the OpenAI-compatible
`stream=true`) authenticate once, when they open, and may then stay open for minutes. A user
disabled, deleted, signed out or removed from a reviewer group meanwhile must not go on hearing
about runs. Two things end them:

- an announcement, after the commit that changed the user (`access_changed`): the channel group
  `user.<id>` (every open socket of the user joins it) and the Redis stream
  `warden:user:<id>:access` (event streams read it beside the run's log). It carries no
  authority: each socket and stream asks the database again (`session_user`, the streams'
  credential checks); only a sign-out names the session that ended, by a digest of its key;
- a check every WARDEN_LIVE_RECHECK_SECONDS while open (before an event is forwarded, and
  while idle), for whatever changed without a signal (`QuerySet.update`, a revoked token, an
  expired session).

Signals here are fan-out only (STYLE.md 6): they decide nothing, the checks do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.db import transaction

from governance.live import Log, send

RECHECK_SECONDS = 5.0  # the default of settings.WARDEN_LIVE_RECHECK_SECONDS
KEEP_SECONDS = 3600  # an announcement outlives every stream that could need it
MAX_KEPT = 100


def recheck_seconds() -> float:
    """How long an open channel forwards events on one check of its user's access."""
    return float(getattr(settings, "WARDEN_LIVE_RECHECK_SECONDS", RECHECK_SECONDS))


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def access_key(user_id: int) -> str:
    return f"warden:user:{user_id}:access"


def session_digest(session_key: str | None) -> str:
    """What an announcement says of a session: its key is a credential, kept out of Redis."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32] if session_key else ""


def access_changed(*, user_id: int, session_key: str = "") -> None:
    """After commit (at once outside a transaction), best effort: every open channel of the
    user checks its access again; with `session_key`, that sign-in has ended."""
    digest = session_digest(session_key)
    transaction.on_commit(lambda: _announce(user_id, digest), robust=True)


def _announce(user_id: int, digest: str) -> None:
    """Appended to the user's access stream, then sent to the user's channel group; if the
    append fails the periodic checks still end the channels, a few seconds later."""
    log = Log(access_key(user_id), {"s": digest}, MAX_KEPT, KEEP_SECONDS)
    send(user_group(user_id), {"type": "access.changed", "session": digest}, log=log)


async def access_last_id(redis, user_id: int) -> str:
    """Where a new reader of the user's announcements starts: after the last one."""
    last = await redis.xrevrange(access_key(user_id), count=1)
    return last[0][0].decode() if last else "0-0"


def ended_sessions(entries) -> set[str]:
    """The session digests that announcements (stream entries) name."""
    return {json.loads(fields[b"s"]) for _, fields in entries}


def session_user(session_key: str | None):
    """The user whom the session `session_key` still signs in, or None: Django's own check of
    each request (the session exists and has not expired, its backend is still configured and
    still gives an active user, whose password is the one the session was made with), without
    its side effects (a request flushes a session that fails, or moves one made under an old
    SECRET_KEY to a new key, which a websocket could not tell its browser)."""
    return session_users([session_key]).get(session_key) if session_key else None


def session_users(session_keys: Iterable[str | None]) -> dict[str, Any]:
    """`session_user` of each session key at once (keys that sign nobody in map to None): with
    a database session engine, one query for the sessions and one for their users, whatever
    their number (a web process re-checks every open websocket's session every few seconds)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
    from django.contrib.auth.backends import ModelBackend
    from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
    from django.utils import timezone

    keys = {key for key in session_keys if key}
    found: dict[str, Any] = dict.fromkeys(keys)
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if issubclass(store, DatabaseStore):  # db and cached_db: the rows, read in one query
        rows = store.get_model_class().objects.filter(
            session_key__in=keys, expire_date__gt=timezone.now()
        )
        sessions = {row.session_key: store().decode(row.session_data) for row in rows}
    else:
        sessions = {key: dict(store(key).items()) for key in keys}
    pk = get_user_model()._meta.pk
    claims = {}  # session key -> (backend path, user id)
    for key, data in sessions.items():
        user_id, backend_path = data.get(SESSION_KEY), data.get(BACKEND_SESSION_KEY)
        if user_id is not None and backend_path in settings.AUTHENTICATION_BACKENDS:
            claims[key] = (backend_path, pk.to_python(user_id))
    users: dict[tuple[str, Any], Any] = {}
    by_backend: dict[str, set] = {}
    for backend_path, user_id in claims.values():
        by_backend.setdefault(backend_path, set()).add(user_id)
    for backend_path, ids in by_backend.items():
        backend = load_backend(backend_path)
        if isinstance(backend, ModelBackend) and type(backend).get_user is ModelBackend.get_user:
            # ModelBackend's own get_user, in bulk
            for user_id, bulk_user in get_user_model()._default_manager.in_bulk(ids).items():
                if backend.user_can_authenticate(bulk_user):
                    users[backend_path, user_id] = bulk_user
        else:
            for user_id in ids:
                users[backend_path, user_id] = backend.get_user(user_id)
    for key, claim in claims.items():
        signed_in = users.get(claim)
        if signed_in is not None and signed_in.is_active and _signs_in(sessions[key], signed_in):
            found[key] = signed_in
    return found


def _signs_in(session: dict, user) -> bool:
    """The session was made with the user's current password (or a fallback key's hash)."""
    from django.contrib.auth import HASH_SESSION_KEY
    from django.utils.crypto import constant_time_compare

    signed = session.get(HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return bool(signed) and any(constant_time_compare(signed, h) for h in hashes)


# Signal receivers (connected in AgentsConfig.ready) ----------------------------------------


def user_saved(sender, instance, created, update_fields=None, **kwargs) -> None:
    """Saved disabled, or with a new password (its other sessions no longer sign it in).
    Other saves (a sign-in noting `last_login`, a name) take nothing away: no announcement,
    so that no one can make every open socket of a user ask the database at will.
    `_password` is the raw password `set_password` keeps until the save has sent this signal
    (AbstractBaseUser.save)."""
    if created or (update_fields is not None and not {"is_active", "password"} & {*update_fields}):
        return
    if instance.is_active and getattr(instance, "_password", None) is None:
        return
    access_changed(user_id=instance.pk)


def user_deleted(sender, instance, **kwargs) -> None:
    access_changed(user_id=instance.pk)


def user_signed_out(sender, request, user, **kwargs) -> None:
    """Sent before the session is flushed: the channels of that session end without asking
    the database, which still has it for a moment."""
    if user is not None and user.pk is not None:
        session = getattr(request, "session", None)
        access_changed(user_id=user.pk, session_key=getattr(session, "session_key", None) or "")


def groups_changed(sender, instance, action, reverse, pk_set, **kwargs) -> None:
    """A user left a group (a reviewer role, an approver group): an inbox may have to close.
    Joining one takes nothing away."""
    if action == "post_remove":
        users = pk_set if reverse else {instance.pk}
    elif action == "pre_clear":
        users = set(instance.user_set.values_list("pk", flat=True)) if reverse else {instance.pk}
    else:
        return
    for user_id in users:
        access_changed(user_id=user_id)
