"""Personal access tokens: made, found and revoked (the API's credential for a person; an
integration uses OAuth2 client credentials instead)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import Target, audit_record
from integrations.models import PersonalAccessToken

PREFIX = "wdn_pat_"
MAX_DAYS = 366
# `last_used_at` is written at most this often per token: a busy token costs no write per call.
USE_RECORDED_EVERY = timedelta(minutes=1)


class TokenError(Exception):
    """The token cannot be made as asked; the message says why."""


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_create(
    *, user, name: str, scopes: list[str], days: int
) -> tuple[PersonalAccessToken, str]:
    """A new token for `user` and its secret, which is returned this once and kept nowhere."""
    known = settings.OAUTH2_PROVIDER["SCOPES"]
    name = name.strip()
    if not name:
        raise TokenError("give the token a name")
    if len(name) > 100:
        raise TokenError("the name is longer than 100 characters")
    unknown = sorted(set(scopes) - set(known))
    if unknown:
        raise TokenError(f"unknown scopes: {', '.join(unknown)}")
    if not scopes:
        raise TokenError("choose at least one scope")
    if not 1 <= days <= MAX_DAYS:
        raise TokenError(f"a token lasts from 1 to {MAX_DAYS} days")
    secret = PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = PersonalAccessToken.objects.create(
            user=user,
            name=name,
            prefix=secret[: len(PREFIX) + 4],
            digest=token_digest(secret),
            scopes=sorted(set(scopes)),
            expires_at=timezone.now() + timedelta(days=days),
        )
        audit_record(
            actor=user,
            action="token.created",
            target=Target.of(token),
            data={"scopes": token.scopes, "expires_at": token.expires_at},
        )
    return token, secret


def token_revoke(*, token: PersonalAccessToken, actor) -> None:
    """Revoke the token (at once: the next request with it is refused)."""
    with transaction.atomic():
        revoked = PersonalAccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            audit_record(actor=actor, action="token.revoked", target=Target.of(token))


def token_find(secret: str) -> PersonalAccessToken | None:
    """The active token with this secret, its use noted; None for anything else."""
    if not secret.startswith(PREFIX) or len(secret) > 100:
        return None
    now = timezone.now()
    token = (
        PersonalAccessToken.objects.select_related("user")
        .filter(digest=token_digest(secret), revoked_at__isnull=True, expires_at__gt=now)
        .first()
    )
    if token is None:
        return None
    if token.last_used_at is None or token.last_used_at < now - USE_RECORDED_EVERY:
        PersonalAccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def tokens_of(user):
    return PersonalAccessToken.objects.filter(user=user)
