"""Lockouts after repeated failed credentials (issue 19): sign-in, client secrets, bearer tokens.

django-axes counts failures in PostgreSQL (`axes.AccessAttempt`), so a lockout outlives a
restart and holds across every daphne process. Three channels, each with its own subject:

- sign-in (the one sign-in page, the admin's included): the typed username;
- client (`POST /o/token/`, portal.views.TokenView): `client:<client_id>` (a colon is not
  allowed in a username, so no account shares a client's counter);
- bearer (personal and OAuth access tokens on the API and /v1/, integrations.api.auth):
  `(bearer token)`, one counter per address: a token names no account before it is found.

A subject is locked out from an address after WARDEN_LOCKOUT_FAILURES failures there, and an
address altogether after WARDEN_LOCKOUT_ADDRESS_FAILURES sign-in and client failures (so one
address cannot try a few passwords on each of many accounts); bearer tokens after
WARDEN_LOCKOUT_TOKEN_FAILURES from one address. Only an address's own failures count against
it: another person's guesses never lock a user out of another address. Failures are forgotten
WARDEN_LOCKOUT_MINUTES after the last one; a lockout lasts that long after its last failure (a
refused attempt does not extend it) or until an admin resets it (README, "Lockouts"). A
successful sign-in forgets that account's failures from that address only.

Each lockout is one audit event `auth.locked_out`, naming the channel, the account or client
when one exists, and the address; never a password, secret or token.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import timedelta
from urllib.parse import unquote_plus

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max, QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.crypto import salted_hmac

from audit.services import SYSTEM, Target, audit_record

SIGN_IN = "sign-in"
CLIENT = "client"
BEARER = "bearer"
BEARER_SUBJECT = "(bearer token)"  # not a possible username: Django's allow only [\w.@+-]
CLIENT_PREFIX = "client:"
MAX_SUBJECT = 150  # as a username; axes' column holds 255

PROBLEM_PATHS = ("/api/", "/v1/", "/o/")


def lockout_channel(username: str | None) -> str:
    if username == BEARER_SUBJECT:
        return BEARER
    if username and username.startswith(CLIENT_PREFIX):
        return CLIENT
    return SIGN_IN


class LockoutHandler(AxesDatabaseHandler):
    """axes' database handler with a limit per group of attempts (AXES_HANDLER).

    axes compares the largest of its groups' failure counts with one limit; Warden's groups
    have limits of their own (an address may fail more often than one account from it).
    `get_failures` therefore answers the limit minus the smallest headroom left in any group:
    it reaches AXES_FAILURE_LIMIT exactly when some group reaches its own limit, and equals the
    real count for the (account, address) group.
    """

    def _groups(self, request, credentials) -> list[tuple[QuerySet, int]]:
        username = get_client_username(request, credentials)
        address = request.axes_ip_address
        attempts = AccessAttempt.objects.all()
        if lockout_channel(username) == BEARER:
            limit = settings.WARDEN_LOCKOUT_TOKEN_FAILURES
            return [(attempts.filter(username=BEARER_SUBJECT, ip_address=address), limit)]
        return [
            (attempts.filter(username=username, ip_address=address), settings.AXES_FAILURE_LIMIT),
            (
                # exclude() keeps rows with no username (Django adds IS NOT NULL to the test)
                attempts.filter(ip_address=address).exclude(username=BEARER_SUBJECT),
                settings.WARDEN_LOCKOUT_ADDRESS_FAILURES,
            ),
        ]

    def filter_user_attempts(self, request, credentials=None) -> list[QuerySet]:
        return [attempts for attempts, _ in self._groups(request, credentials)]

    def _counts(self, request, credentials) -> list[tuple[int, int]]:
        """(failures within the cool-off, limit) per group."""
        limits = [limit for _, limit in self._groups(request, credentials)]
        counts = [
            attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0
            for attempts in self.get_user_attempts(request, credentials)
        ]
        return list(zip(counts, limits, strict=True))

    def get_failures(self, request, credentials=None) -> int:
        worst = max(count - limit for count, limit in self._counts(request, credentials))
        return max(0, get_failure_limit(request, credentials) + worst)

    def reset_user_attempts(self, request, credentials=None) -> int:
        # axes would delete every group's rows: a sign-in to one's own account would then wipe
        # the address's failures against everyone else's.
        username = get_client_username(request, credentials)
        count, _ = AccessAttempt.objects.filter(
            username=username, ip_address=request.axes_ip_address
        ).delete()
        return count

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs):
        if request is None:
            return super().user_login_failed(sender, credentials, request, **kwargs)
        with transaction.atomic():
            # A refused attempt while locked (axes' backend marks it) is not a new lockout.
            was_locked = request.axes_locked_out or self.is_locked(request, credentials)
            super().user_login_failed(sender, credentials, request, **kwargs)
            if request.axes_locked_out and not was_locked:
                # Two failures racing past the limit may both see it crossed: then two events.
                _record_lockout(request, credentials, self._counts(request, credentials))


def lockout_target(channel: str, username: str | None, address: str | None) -> Target:
    """Who a lockout is of, as the audit trail names it: the account, the application or the
    address; a keyed digest where what was typed names none (never the text)."""
    if channel == BEARER:
        return Target("address", "", address or "unknown address")
    if channel == CLIENT:
        from oauth2_provider.models import get_application_model

        client_id = (username or "").removeprefix(CLIENT_PREFIX)
        application = get_application_model().objects.filter(client_id=client_id).first()
        if application is not None:
            return Target.of(application)
        digest = salted_hmac("warden.audit.client", client_id).hexdigest()[:16]
        return Target("oauth2_provider.application", "", f"unknown client {digest}")
    user = get_user_model().objects.filter(username=username or "").first()
    if user is not None:
        return Target.of(user)
    # What was typed is no user's name (often a password in the wrong box): as portal.views.
    digest = salted_hmac("warden.audit.sign_in", username or "").hexdigest()[:16]
    return Target("auth.user", "", f"unknown user {digest}")


def _record_lockout(request, credentials, counts: list[tuple[int, int]]) -> None:
    username = get_client_username(request, credentials)
    channel = lockout_channel(username)
    address = request.axes_ip_address
    target = lockout_target(channel, username, address)
    if channel == BEARER:
        scope = "address"
    elif counts[0][0] >= counts[0][1]:
        scope = "account and address" if channel == SIGN_IN else "client and address"
    else:
        scope = "address"
    audit_record(
        actor=SYSTEM,
        action="auth.locked_out",
        target=target,
        data={
            "channel": channel,
            "scope": scope,
            "address": address or "",
            "failures": max(count for count, _ in counts),
            "cool_off_seconds": int(get_cool_off(request).total_seconds()),
        },
        stream=f"auth.sign_in:{target.label}" if channel == SIGN_IN else None,
    )


def lockout_lift(*, attempts: QuerySet, actor) -> int:
    """Forget these failures (an admin unlocking), one audit event `auth.unlocked` per subject
    and address; the number of rows removed."""
    with transaction.atomic():
        rows = list(attempts.select_for_update().order_by("pk"))
        for attempt in rows:
            channel = lockout_channel(attempt.username)
            target = lockout_target(channel, attempt.username, attempt.ip_address)
            audit_record(
                actor=actor,
                action="auth.unlocked",
                target=target,
                data={
                    "channel": channel,
                    "address": attempt.ip_address or "",
                    "failures": attempt.failures_since_start,
                },
                stream=f"auth.sign_in:{target.label}" if channel == SIGN_IN else None,
            )
        AccessAttempt.objects.filter(pk__in=[attempt.pk for attempt in rows]).delete()
    return len(rows)


def retry_after(request, credentials=None) -> int:
    """Whole seconds until the lockout this request meets ends (its last failure + cool-off)."""
    handler = AxesProxyHandler.get_implementation()
    latest = None
    for attempts in handler.get_user_attempts(request, credentials):
        last = attempts.aggregate(last=Max("attempt_time"))["last"]
        if last is not None and (latest is None or last > latest):
            latest = last
    cool_off: timedelta = get_cool_off(request)
    if latest is None:
        return int(cool_off.total_seconds())
    return max(1, math.ceil((latest + cool_off - timezone.now()).total_seconds()))


def _wait_words(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def lockout_response(request, original_response=None, credentials=None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: a page for people, a problem document (429) for clients; both
    with Retry-After. (axes' async middleware passes the credentials second; they are read
    from the request instead.)"""
    credentials = getattr(request, "axes_credentials", None)
    wait = retry_after(request, credentials)
    if request.path.startswith(PROBLEM_PATHS):
        return locked_problem(request, wait)
    return locked_page(request, wait)


def locked_page(request, wait: int) -> HttpResponse:
    """The 429 page a person sees, saying when to try again (Retry-After too)."""
    response = render(
        request,
        "registration/locked_out.html",
        {"wait": _wait_words(wait), "minutes": settings.WARDEN_LOCKOUT_MINUTES},
        status=429,
    )
    response["Retry-After"] = str(wait)
    return response


def locked_problem(request, wait: int) -> HttpResponse:
    from integrations.api.problems import problem_response

    response = problem_response(
        request,
        429,
        "throttled",
        f"too many failed credentials from this address: try again in {_wait_words(wait)}",
    )
    response["Retry-After"] = str(wait)
    return response


# Clients and bearer tokens ------------------------------------------------------------------


def _stand_in(request) -> HttpRequest:
    """What axes sees of a token request: its address, headers and path, never its body (a
    client secret in a form, a request not yet authenticated that is not ours to parse)."""
    request = getattr(request, "_request", request)  # a DRF request wraps Django's
    stand_in = HttpRequest()
    stand_in.META = request.META
    stand_in.path = request.path
    stand_in.path_info = request.path_info
    stand_in.method = request.method
    return stand_in


def lockout_wait(*, request, subject: str) -> int | None:
    """Seconds until `subject` may try again from this request's address; None if it may now."""
    if not settings.AXES_ENABLED:
        return None
    stand_in = _stand_in(request)
    # axes.conf gives the settings its defaults at import: django-stubs knows only ours.
    credentials = {settings.AXES_USERNAME_FORM_FIELD: subject}  # type: ignore[misc]
    if AxesProxyHandler.is_allowed(stand_in, credentials):
        return None
    return retry_after(stand_in, credentials)


def lockout_fail(*, request, subject: str) -> int | None:
    """Count a failure of `subject` from this request's address; the wait if it now is locked
    out (this failure was the last one allowed), else None."""
    if not settings.AXES_ENABLED:
        return None
    stand_in = _stand_in(request)
    # axes.conf gives the settings its defaults at import: django-stubs knows only ours.
    credentials = {settings.AXES_USERNAME_FORM_FIELD: subject}  # type: ignore[misc]
    AxesProxyHandler.user_login_failed(sender=__name__, credentials=credentials, request=stand_in)
    if not stand_in.axes_locked_out:  # type: ignore[attr-defined]  # axes sets it, untyped
        return None
    return retry_after(stand_in, credentials)


def client_subject(request: HttpRequest) -> str:
    """`client:<client_id>` of a token request, as DOT reads it (HTTP Basic first, then the
    form); `client:` when it names none (then only the address's counter applies, in effect)."""
    client_id = ""
    kind, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() == "basic":
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "replace")
            client_id = unquote_plus(decoded.partition(":")[0])
        except (binascii.Error, ValueError):
            client_id = ""
    if not client_id:
        client_id = str(request.POST.get("client_id", ""))
    client_id = client_id.replace("\x00", "").encode("utf-8", "replace").decode()
    return (CLIENT_PREFIX + client_id)[:MAX_SUBJECT]
