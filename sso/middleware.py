"""Renewal of SSO sessions: what the provider says about a signed-in person now.

Every WARDEN_OIDC_RENEW_SECONDS a session begun through SSO asks the provider again with its
refresh token. A refused refresh (`invalid_grant`: the account removed or disabled there, its
sessions or tokens revoked, or the refresh token expired) ends the Warden session: the person
must sign in at the provider again. A granted one fetches userinfo with the new access token:
the mapped groups are set again, and an account the active claim says is disabled is
deactivated (sso.services). A provider that cannot be reached ends nothing; it is asked again
a minute later.
"""

from __future__ import annotations

import logging
import time

import requests
from django.conf import settings
from django.contrib import auth
from django.core.cache import cache
from django.db import transaction

from audit.services import SYSTEM, Target, audit_record
from sso.discovery import DiscoveryError, provider_config
from sso.models import Identity
from sso.services import groups_map_apply, provider_says_inactive
from tools import secrets

logger = logging.getLogger(__name__)
RETRY_SECONDS = 60
LOCK_SECONDS = 60


def schedule_renewal(session, seconds: float | None = None) -> None:
    session["sso_renew_at"] = time.time() + (
        settings.WARDEN_OIDC_RENEW_SECONDS if seconds is None else seconds
    )


class ProviderRenewal:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session = getattr(request, "session", None)
        sso = session.get("sso") if session is not None else None
        if (
            isinstance(sso, dict)
            and request.user.is_authenticated
            and time.time() >= float(session.get("sso_renew_at", 0))
            # One request of the session renews; those in parallel (a page's other requests)
            # go on without: a refresh token used twice is refused by providers that rotate
            # them, which would end the session.
            and cache.add(f"sso:renewing:{session.session_key}", 1, timeout=LOCK_SECONDS)
        ):
            try:
                session_renew(request=request, sso=sso)
            finally:
                cache.delete(f"sso:renewing:{session.session_key}")
        return self.get_response(request)


def session_renew(*, request, sso: dict) -> None:
    user = request.user
    try:
        refresh_token = secrets.decrypt(sso.get("refresh_token") or "", label="a refresh token")
    except secrets.SecretError:  # none, or sealed with a key since retired
        refresh_token = ""
    if not refresh_token:
        schedule_renewal(request.session)
        return
    try:
        config = provider_config()
        response = requests.post(
            config.token_endpoint,
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": settings.WARDEN_OIDC_CLIENT_ID,
                "client_secret": settings.WARDEN_OIDC_CLIENT_SECRET,
            },
            timeout=settings.WARDEN_OIDC_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
        if response.status_code in (400, 401):
            _end(request, user, reason=f"the provider refused to renew ({_error(response)})")
            return
        response.raise_for_status()
        tokens = response.json()
        userinfo = requests.get(
            config.userinfo_endpoint,
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            timeout=settings.WARDEN_OIDC_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
        if userinfo.status_code in (401, 403):
            reason = f"the provider refused userinfo (HTTP {userinfo.status_code})"
            _end(request, user, reason=reason)
            return
        userinfo.raise_for_status()
        claims = userinfo.json()
    except (requests.RequestException, DiscoveryError, ValueError, KeyError, TypeError) as exc:
        logger.warning("SSO renewal could not reach the provider: %s", type(exc).__name__)
        schedule_renewal(request.session, RETRY_SECONDS)
        return
    if not isinstance(claims, dict) or str(claims.get("sub")) != str(sso.get("subject")):
        _end(request, user, reason="the provider's userinfo is about another subject")
        return
    with transaction.atomic(durable=True):
        if provider_says_inactive(claims):
            user.is_active = False
            user.save(update_fields=["is_active"])
            Identity.objects.filter(
                user=user, issuer=sso.get("issuer"), subject=sso.get("subject")
            ).update(deactivated_by_provider=True)
            audit_record(
                actor=SYSTEM,
                action="auth.sso_deactivated",
                target=Target.of(user),
                data={"issuer": sso.get("issuer"), "reason": "the provider's claim at renewal"},
            )
        else:
            groups_map_apply(user=user, claims=claims, actor=SYSTEM)
    if not user.is_active:
        auth.logout(request)
        return
    renewed = tokens.get("refresh_token") or refresh_token
    request.session["sso"] = {**sso, "refresh_token": secrets.encrypt(str(renewed))}
    schedule_renewal(request.session)


def _end(request, user, *, reason: str) -> None:
    with transaction.atomic(durable=True):
        audit_record(
            actor=SYSTEM,
            action="auth.sso_session_ended",
            target=Target.of(user),
            data={"reason": reason},
        )
    auth.logout(request)


def _error(response) -> str:
    try:
        return str(response.json().get("error", ""))[:100] or f"HTTP {response.status_code}"
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"
