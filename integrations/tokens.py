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


# OAuth2 tokens (django-oauth-toolkit's): revoked by a governance admin, audited. DOT's own
# admin actions revoke them too, but unaudited; Warden's admin calls these instead.


def oauth_token_revoke(*, token, actor) -> None:
    """Revoke an OAuth2 access token and its refresh token (DOT's shared revoke path: the
    refresh token is kept as a revoked tombstone, the access token deleted)."""
    from oauth2_provider.models import revoke_access_token

    target = Target(
        "oauth2_provider.accesstoken",
        str(token.pk),
        f"{token.application or 'no application'} for {token.user or 'no user'}"[:200],
    )
    with transaction.atomic():
        revoke_access_token(token)
        audit_record(
            actor=actor,
            action="token.revoked",
            target=target,
            data={"kind": "oauth2", "application": token.application_id, "user": token.user_id},
        )


def oauth_refresh_token_revoke(*, token, actor) -> None:
    """Revoke an OAuth2 refresh token and the access token it is bound to."""
    target = Target(
        "oauth2_provider.refreshtoken",
        str(token.pk),
        f"{token.application or 'no application'} for {token.user or 'no user'}"[:200],
    )
    with transaction.atomic():
        if token.revoked is None:
            token.revoke()
            audit_record(
                actor=actor,
                action="token.revoked",
                target=target,
                data={"kind": "oauth2_refresh", "application": token.application_id},
            )


def oauth_application_tokens_revoke(*, application, actor) -> int:
    """Revoke every token of `application` at once: refresh tokens (kept, marked revoked),
    access and ID tokens and unused authorization codes (deleted). The application stays, and
    can be given new tokens; returns how many access and refresh tokens were live."""
    from oauth2_provider.models import (
        get_access_token_model,
        get_grant_model,
        get_id_token_model,
        get_refresh_token_model,
    )

    with transaction.atomic():
        refreshed = (
            get_refresh_token_model()
            .objects.filter(application=application, revoked__isnull=True)
            .update(revoked=timezone.now(), access_token=None)
        )
        access = get_access_token_model()
        _, deleted = access.objects.filter(application=application).delete()
        accessed = deleted.get(access._meta.label, 0)
        get_id_token_model().objects.filter(application=application).delete()
        get_grant_model().objects.filter(application=application).delete()
        audit_record(
            actor=actor,
            action="application.tokens_revoked",
            target=Target("oauth2_provider.application", str(application.pk), application.name),
            data={"refresh_tokens": refreshed, "access_tokens": accessed},
        )
    return refreshed + accessed
