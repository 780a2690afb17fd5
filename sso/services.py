"""Signing in through the provider: the account linked to the provider's subject (created on
first sign-in), its groups set from the mapped claim, deactivation when the provider says so.
Each change is in the audit trail."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import SYSTEM, Target, audit_record
from sso.models import Identity

INACTIVE_VALUES = {"false", "0", "no", "disabled", "inactive", "suspended", "deleted"}


class SignInRefused(Exception):
    """The provider's answer does not sign anyone in; the message is for the person signing in."""


def identity_sign_in(*, issuer: str, claims: dict[str, Any], client: dict[str, str]):
    """The Warden account for verified `claims`: found by (issuer, sub), created on first
    sign-in (just in time), profile and mapped groups brought up to date. Raises SignInRefused
    for an account the provider or an admin deactivated (after recording the deactivation)."""
    subject = str(claims.get("sub") or "")
    if not subject or len(subject) > 255:
        raise SignInRefused("the provider gave no usable subject (sub)")
    try:
        user, refusal = _sign_in(issuer=issuer, subject=subject, claims=claims, client=client)
    except IntegrityError:  # a first sign-in of the same person at the same moment: once more
        user, refusal = _sign_in(issuer=issuer, subject=subject, claims=claims, client=client)
    if refusal:
        raise SignInRefused(refusal)
    return user


def _sign_in(*, issuer, subject, claims, client):
    User = get_user_model()
    with transaction.atomic(durable=True):
        identity = (
            Identity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=issuer, subject=subject)
            .first()
        )
        if identity is None:
            if provider_says_inactive(claims):  # no account is made for a disabled person
                return None, "your account is disabled at the provider"
            user = User.objects.create_user(  # no password: an unusable one
                username=_free_username(claims, User),
                email=_text(claims.get("email"), 254),
                first_name=_text(claims.get("given_name"), 150),
                last_name=_text(claims.get("family_name"), 150),
            )
            identity = Identity.objects.create(user=user, issuer=issuer, subject=subject)
            audit_record(
                actor=SYSTEM,
                action="auth.sso_account_created",
                target=Target.of(user),
                data={"issuer": issuer, "subject": subject, **client},
            )
        user = identity.user
        if provider_says_inactive(claims):
            if user.is_active:
                _set_active_by_provider(
                    user=user,
                    identity=identity,
                    active=False,
                    data={"issuer": issuer, "reason": "the provider's claim", **client},
                )
            return user, "your account is disabled at the provider"
        if not user.is_active:
            if not identity.deactivated_by_provider:
                audit_record(
                    actor=SYSTEM,
                    action="auth.sign_in_failed",
                    target=Target.of(user),
                    data={"method": "sso", "reason": "deactivated in Warden", **client},
                )
                return user, "your Warden account is deactivated; ask a governance admin"
            # Deactivated because the provider said so, and now it accepts the person again.
            _set_active_by_provider(
                user=user, identity=identity, active=True, data={"issuer": issuer, **client}
            )
        _update_profile(user=user, claims=claims)
        groups_map_apply(user=user, claims=claims, actor=SYSTEM)
        identity.last_sign_in_at = timezone.now()
        identity.save(update_fields=["last_sign_in_at"])
        audit_record(
            actor=user,
            action="auth.signed_in",
            target=Target.of(user),
            data={"method": "sso", "issuer": issuer, **client},
        )
    return user, None


def provider_says_inactive(claims: dict[str, Any]) -> bool:
    name = settings.WARDEN_OIDC_ACTIVE_CLAIM
    if not name or name not in claims:
        return False
    value = claims[name]
    return value is False or value == 0 or str(value).strip().lower() in INACTIVE_VALUES


def groups_map_apply(*, user, claims: dict[str, Any], actor) -> dict[str, list[str]]:
    """Set the user's groups named in WARDEN_OIDC_GROUP_MAP from the groups claim; groups the
    map does not name (given by hand) are left alone. Missing groups are created."""
    mapping = settings.WARDEN_OIDC_GROUP_MAP
    managed = {name for target in mapping.values() for name in _names(target)}
    wanted: set[str] = set()
    for value in claim_values(claims.get(settings.WARDEN_OIDC_GROUPS_CLAIM)):
        wanted.update(_names(mapping.get(value, [])))
    current = set(user.groups.filter(name__in=managed).values_list("name", flat=True))
    added, removed = sorted(wanted - current), sorted(current - wanted)
    created = []
    for name in added:
        group, was_created = Group.objects.get_or_create(name=name)
        if was_created:
            created.append(name)
        user.groups.add(group)
    if removed:
        user.groups.remove(*Group.objects.filter(name__in=removed))
    change = {"added": added, "removed": removed, "created_groups": created}
    if added or removed:
        audit_record(
            actor=actor,
            action="auth.sso_groups_changed",
            target=Target.of(user),
            data={**change, "claim": settings.WARDEN_OIDC_GROUPS_CLAIM},
        )
    return change


def claim_values(value: Any) -> list[str]:
    """A groups claim as a list of strings: providers send a list, one string, or nothing."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(item) for item in value if isinstance(item, str | int)]
    return []


def _names(target: str | list[str]) -> list[str]:
    return [target] if isinstance(target, str) else list(target)


def _update_profile(*, user, claims) -> None:
    fields = {
        "email": _text(claims.get("email"), 254),
        "first_name": _text(claims.get("given_name"), 150),
        "last_name": _text(claims.get("family_name"), 150),
    }
    changed = [name for name, value in fields.items() if value and getattr(user, name) != value]
    for name in changed:
        setattr(user, name, fields[name])
    if changed:
        user.save(update_fields=changed)


def _text(value: Any, limit: int) -> str:
    return str(value).replace("\x00", "")[:limit] if isinstance(value, str) else ""


def _free_username(claims: dict[str, Any], User) -> str:
    """A new account's username: the configured claim, else the email, else the subject, in
    the characters Django allows; `-2`, `-3`... when an existing account has it (never linked
    to it: a name at the provider proves nothing about an account here)."""
    raw = ""
    for key in (settings.WARDEN_OIDC_USERNAME_CLAIM, "email", "sub"):
        if isinstance(claims.get(key), str) and claims[key].strip():
            raw = claims[key].strip()
            break
    base = re.sub(r"[^\w.@+-]", "-", raw)[:140] or "user"
    candidate, n = base, 1
    while User.objects.filter(username__iexact=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _set_active_by_provider(*, user, identity, active: bool, data: dict) -> None:
    """The provider's say on whether the account may sign in, recorded on both rows (an
    account it deactivated is the only kind it may activate again) and audited."""
    user.is_active = active
    user.save(update_fields=["is_active"])
    identity.deactivated_by_provider = not active
    identity.save(update_fields=["deactivated_by_provider"])
    action = "auth.sso_reactivated" if active else "auth.sso_deactivated"
    audit_record(actor=SYSTEM, action=action, target=Target.of(user), data=data)
