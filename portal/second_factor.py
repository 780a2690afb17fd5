"""A second factor after the password (issue 19): TOTP (django-otp) and one-time recovery codes.

Who must use one is WARDEN_SECOND_FACTOR_GROUPS (group names, plus `superusers` and `staff`).
Such a user's session, once the password is right, owes the second factor: until it is given
(`django_otp.login` marks the session), SecondFactorMiddleware lets it reach only the pages in
SECOND_FACTOR_OPEN (sign-in, sign-out, verification, enrolment); other pages redirect to
verification (enrolment when the user has no authenticator yet), the API answers 403 and the
websocket refuses (SecondFactorWebsocketMiddleware). An API request with an Authorization
header, and the OAuth token endpoints, are authenticated by the token or client alone: the
owing session is hidden from them.

Wrong codes count towards the sign-in lockout of the account from that address
(integrations.lockout), and each device also slows its own guessing (django-otp's throttle: 1, 2,
4, ... seconds), which a password sign-in does not reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlencode

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import Resolver404, resolve, reverse
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.services import Target, audit_record
from integrations.lockout import lockout_fail

SUPERUSERS = "superusers"
STAFF = "staff"
RECOVERY_CODES = 10

# URL names a session owing its second factor may reach. Other sign-in methods (OIDC callbacks)
# add theirs here.
SECOND_FACTOR_OPEN: set[str] = {
    "login",
    "logout",
    "second-factor",
    "second-factor-enrol",
}
API_PREFIXES = ("/api/", "/v1/")
# OAuth endpoints that authenticate the client, never the browser's session.
SESSIONLESS = ("/o/token/", "/o/revoke_token/", "/o/introspect/")


def second_factor_required(user) -> bool:
    """Whether `user` must give a second factor after the password (one query at most)."""
    wanted = settings.WARDEN_SECOND_FACTOR_GROUPS
    if not wanted or not user.is_authenticated:
        return False
    if SUPERUSERS in wanted and user.is_superuser:
        return True
    if STAFF in wanted and user.is_staff:
        return True
    names = [name for name in wanted if name not in (SUPERUSERS, STAFF)]
    return bool(names) and user.groups.filter(name__in=names).exists()


def second_factor_owed(request: HttpRequest) -> bool:
    """Whether this request's session is signed in but has not given the second factor it
    must (request.user is the session's: AuthenticationMiddleware and OTPMiddleware)."""
    user = request.user
    if not user.is_authenticated:
        return False
    is_verified = getattr(user, "is_verified", None)  # absent on the user login() just set
    if is_verified() if is_verified else session_verified(user=user, session=request.session):
        return False
    return second_factor_required(user)


def session_verified(*, user, session) -> bool:
    """Whether `session` records a second factor of `user` (for the websocket, where
    OTPMiddleware does not run)."""
    persistent_id = session.get(DEVICE_ID_SESSION_KEY)
    if not persistent_id:
        return False
    device = Device.from_persistent_id(persistent_id)
    return device is not None and device.user_id == user.pk and device.confirmed


def authenticator_for(user) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


# Services ----------------------------------------------------------------------------------


class Outcome(Enum):
    VERIFIED = "verified"
    RECOVERY_CODE = "recovery code"
    WRONG = "wrong"
    THROTTLED = "throttled"  # the device refuses any code for a few seconds after a wrong one
    LOCKED_OUT = "locked out"  # this wrong code was the last the lockout allows


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    wait: int | None = None  # seconds: the throttle's or the lockout's
    remaining: int | None = None  # recovery codes left

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.VERIFIED, Outcome.RECOVERY_CODE)


def _client(request: HttpRequest) -> dict[str, str]:
    return {"address": request.META.get("REMOTE_ADDR", "")}


def _code(typed: str) -> str:
    return "".join(str(typed).split()).replace("-", "").lower()[:32]


def _throttle_wait(device) -> int | None:
    allowed, data = device.verify_is_allowed()
    if allowed:
        return None
    from django.utils import timezone

    locked_until = (data or {}).get("locked_until")
    if locked_until is None:
        return 1
    return max(1, int((locked_until - timezone.now()).total_seconds()) + 1)


def _sign_in_audit(*, request: HttpRequest, user, action: str, data: dict) -> None:
    """Record a step of `user`'s second factor, by them, on their sign-in stream."""
    target = Target.of(user)
    audit_record(
        actor=user,
        action=action,
        target=target,
        data={**_client(request), **data},
        stream=f"auth.sign_in:{target.label}",
    )


def _wrong(*, request: HttpRequest, user, action: str, data: dict) -> Result:
    _sign_in_audit(request=request, user=user, action=action, data=data)
    # The same counter as the password: five wrong codes lock the account out from here.
    wait = lockout_fail(request=request, subject=user.get_username())
    if wait is not None:
        return Result(Outcome.LOCKED_OUT, wait=wait)
    return Result(Outcome.WRONG)


def _locked_device(*, user, confirmed: bool) -> TOTPDevice | None:
    """`user`'s first authenticator, confirmed or still enrolling, locked for this transaction."""
    return (
        TOTPDevice.objects.select_for_update()
        .filter(user=user, confirmed=confirmed)
        .order_by("pk")
        .first()
    )


def second_factor_verify(*, request: HttpRequest, user, typed: str) -> Result:
    """Check a 6-digit code of `user`'s authenticator or one of their recovery codes; on
    success the session is marked verified (and given a new key). A recovery code is spent
    by the same statement that finds it, so two requests cannot both use it."""
    code = _code(typed)
    with transaction.atomic():
        if code.isdigit() and len(code) == 6:
            device = _locked_device(user=user, confirmed=True)
            if device is None:
                return _wrong(
                    request=request, user=user, action="auth.second_factor_failed", data={}
                )
            wait = _throttle_wait(device)
            if wait is not None:
                return Result(Outcome.THROTTLED, wait=wait)
            if device.verify_token(code):  # refuses a code already used (last_t)
                _verified(
                    request=request,
                    user=user,
                    device=device,
                    action="auth.second_factor_verified",
                    data={"method": "authenticator"},
                )
                return Result(Outcome.VERIFIED)
            return _wrong(
                request=request,
                user=user,
                action="auth.second_factor_failed",
                data={"method": "authenticator"},
            )
        static = (
            StaticDevice.objects.select_for_update()
            .filter(user=user, confirmed=True)
            .order_by("pk")
            .first()
        )
        if static is None or not code:
            return _wrong(
                request=request,
                user=user,
                action="auth.second_factor_failed",
                data={"method": "recovery code"},
            )
        wait = _throttle_wait(static)
        if wait is not None:
            return Result(Outcome.THROTTLED, wait=wait)
        spent, _ = StaticToken.objects.filter(device=static, token=code).delete()
        if not spent:
            static.throttle_increment(commit=True)
            return _wrong(
                request=request,
                user=user,
                action="auth.second_factor_failed",
                data={"method": "recovery code"},
            )
        static.throttle_reset(commit=False)
        static.set_last_used_timestamp(commit=False)
        static.save()
        remaining = static.token_set.count()
        _verified(
            request=request,
            user=user,
            device=static,
            action="auth.recovery_code_used",
            data={"remaining": remaining},
        )
        return Result(Outcome.RECOVERY_CODE, remaining=remaining)


def _verified(*, request: HttpRequest, user, device, action: str, data: dict) -> None:
    """Mark the session verified by `device`, and audit how (`action`, `data`)."""
    # A new session key for the stronger session: one fixed before sign-in is worth nothing.
    request.session.cycle_key()
    otp_login(request, device)
    request.user.otp_device = device  # type: ignore[union-attr]  # django-otp's, untyped
    _sign_in_audit(request=request, user=user, action=action, data=data)


def second_factor_enrolment(*, user) -> TOTPDevice:
    """The authenticator `user` is enrolling: the unconfirmed one already begun (a reload shows
    the same key), else a new one."""
    with transaction.atomic():
        device = _locked_device(user=user, confirmed=False)
        if device is None:
            device = TOTPDevice.objects.create(user=user, name="Authenticator", confirmed=False)
        return device


def second_factor_enrol(*, request: HttpRequest, user, typed: str) -> tuple[Result, list[str]]:
    """Confirm `user`'s new authenticator with a code from it: it becomes their second factor,
    with RECOVERY_CODES new recovery codes (returned this once; older ones are void), and the
    session is verified."""
    code = _code(typed)
    with transaction.atomic():
        if authenticator_for(user) is not None:
            return Result(Outcome.WRONG), []  # enrolled already: verification is the way in
        device = _locked_device(user=user, confirmed=False)
        if device is None:
            return Result(Outcome.WRONG), []
        wait = _throttle_wait(device)
        if wait is not None:
            return Result(Outcome.THROTTLED, wait=wait), []
        if not (code.isdigit() and len(code) == 6 and device.verify_token(code)):
            return _wrong(
                request=request,
                user=user,
                action="auth.second_factor_failed",
                data={"method": "enrolment"},
            ), []
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        StaticDevice.objects.filter(user=user).delete()
        static = StaticDevice.objects.create(user=user, name="Recovery codes", confirmed=True)
        codes = [StaticToken.random_token() for _ in range(RECOVERY_CODES)]
        StaticToken.objects.bulk_create([StaticToken(device=static, token=c) for c in codes])
        _verified(
            request=request,
            user=user,
            device=device,
            action="auth.second_factor_enrolled",
            data={"recovery_codes": RECOVERY_CODES},
        )
    return Result(Outcome.VERIFIED), codes


def second_factor_reset(*, user, actor) -> int:
    """Remove `user`'s authenticators and recovery codes (a lost phone): their sessions owe
    the second factor again, and they enrol a new one; the number of devices removed."""
    with transaction.atomic():
        totp, _ = TOTPDevice.objects.filter(user=user).delete()
        static, _ = StaticDevice.objects.filter(user=user).delete()
        audit_record(
            actor=actor,
            action="auth.second_factor_reset",
            target=Target.of(user),
            data={"authenticators": totp, "recovery_code_sets": static},
        )
    return totp + static


# Enforcement -------------------------------------------------------------------------------


def second_factor_page(request: HttpRequest, user) -> str:
    """Where a session owing its second factor goes: verification, or enrolment."""
    name = "second-factor" if authenticator_for(user) is not None else "second-factor-enrol"
    return reverse(name)


class SecondFactorMiddleware:
    """Holds a session that owes its second factor to the pages that settle it."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not second_factor_owed(request) or self._open(request):
            return self.get_response(request)
        if request.path.startswith(SESSIONLESS) or (
            request.path.startswith(API_PREFIXES) and "Authorization" in request.headers
        ):
            # A token (or a client's secret) speaks for itself; the half-signed-in session must
            # not: DRF would fall back to it were the header not a token it knows.
            request.user = AnonymousUser()
            return self.get_response(request)
        if request.path.startswith(API_PREFIXES):
            from integrations.api.problems import problem_response

            return problem_response(
                request,
                403,
                "second-factor-required",
                "this session has not given its second factor: finish signing in in the "
                "browser, or use a token",
            )
        target = second_factor_page(request, request.user)
        if request.method in ("GET", "HEAD"):
            return redirect(f"{target}?{urlencode({'next': request.get_full_path()})}")
        return redirect(target)

    @staticmethod
    def _open(request: HttpRequest) -> bool:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return False
        return match.url_name in SECOND_FACTOR_OPEN


class SecondFactorWebsocketMiddleware:
    """A websocket's session that owes its second factor is no session: the consumer sees an
    anonymous user and refuses it (4401). Goes inside channels' AuthMiddlewareStack."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        if settings.WARDEN_SECOND_FACTOR_GROUPS and user is not None and user.is_authenticated:
            owed = await database_sync_to_async(_socket_owes)(user=user, session=scope["session"])
            if owed:
                scope = {**scope, "user": AnonymousUser()}
        return await self.inner(scope, receive, send)


def _socket_owes(*, user, session) -> bool:
    return second_factor_required(user) and not session_verified(user=user, session=session)
