import base64
import json
from urllib.parse import urlencode

import qrcode
import qrcode.image.svg
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils.crypto import salted_hmac
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.defaults import page_not_found
from django.views.defaults import server_error as default_server_error
from oauth2_provider import views as oauth2_views

from audit.services import SYSTEM, Target, audit_record
from governance.budgets import usage_for
from integrations.lockout import (
    client_subject,
    locked_page,
    locked_problem,
    lockout_fail,
    lockout_wait,
)
from portal import second_factor as factor

API_PREFIXES = ("/api/", "/v1/")


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    """404: a problem document for the API, the page for people."""
    if request.path.startswith(API_PREFIXES):
        from integrations.api.problems import problem_response

        return problem_response(request, 404, "not-found", "no such resource")
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: a problem document for the API (with the request id), the page for people."""
    if request.path.startswith(API_PREFIXES):
        from integrations.api.problems import problem_response

        return problem_response(
            request,
            500,
            "server-error",
            "Warden failed to answer; the request id identifies the failure in its logs",
            request_id=getattr(request, "request_id", ""),
        )
    return default_server_error(request)


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page says (the admin's pages say nothing)."""
    return redirect(static("portal/favicon.svg"), permanent=True)


RECENT_CONVERSATIONS = 6


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Where one lands: the agents one may use, one's latest conversations, a search over
    them, one's roles and budgets."""
    from agents.selectors import SEARCH_MAX, agents_usable_by, conversations_of
    from governance.roles import GOVERNANCE_ADMIN

    user = request.user
    return render(
        request,
        "portal/home.html",
        {
            "roles": list(user.groups.order_by("name").values_list("name", flat=True)),
            "usage": usage_for(user),
            "agents": list(agents_usable_by(user).order_by("name")),
            "conversations": list(conversations_of(user)[:RECENT_CONVERSATIONS]),
            "search_max": SEARCH_MAX,
            "admin_group": GOVERNANCE_ADMIN,
        },
    )


def _client(request: HttpRequest) -> dict[str, str]:
    return {
        "address": request.META.get("REMOTE_ADDR", ""),
        "agent": request.headers.get("User-Agent", "")[:200],
    }


def admin_sign_in(request: HttpRequest) -> HttpResponse:
    """Where the admin console sends whoever it does not admit. Signed out: the portal's one
    sign-in page (audited), `next` kept. Signed in without admin access (a member, a reviewer):
    a 403 that says so; the sign-in page would send them straight back to /admin/, which would
    send them here again, round and round."""
    from django.contrib import admin

    if request.user.is_authenticated and not admin.site.has_permission(request):
        return render(request, "403.html", {"what": "the admin console"}, status=403)
    query = request.META.get("QUERY_STRING", "")
    return redirect(f"{reverse('login')}?{query}" if query else reverse("login"))


class SignInView(auth_views.LoginView):
    """Django's login, with each success and failure in the audit trail (never the password)."""

    redirect_authenticated_user = True

    def get_success_url(self):
        url = super().get_success_url()
        if factor.second_factor_owed(self.request):
            page = factor.second_factor_page(self.request, self.request.user)
            return f"{page}?{urlencode({'next': url})}"
        return url

    def form_valid(self, form):
        with transaction.atomic():
            response = super().form_valid(form)
            user = form.get_user()
            audit_record(
                actor=user,
                action="auth.signed_in",
                target=Target.of(user),
                data=_client(self.request),
            )
        return response

    def form_invalid(self, form):
        typed = str(form.data.get("username", ""))[:150]
        user = get_user_model().objects.filter(username=typed.replace("\x00", "")).first()
        if user is not None:
            target = Target.of(user)
        else:
            # What was typed is no user's name: often a password in the wrong box. Keep a keyed
            # digest, enough to see repeated attempts, not the text.
            digest = salted_hmac("warden.audit.sign_in", typed).hexdigest()[:16]
            target = Target("auth.user", "", f"unknown user {digest}")
        with transaction.atomic():
            audit_record(
                actor=SYSTEM,
                action="auth.sign_in_failed",
                target=target,
                data=_client(self.request),
                stream=f"auth.sign_in:{target.label}",
            )
        return super().form_invalid(form)


def _next(request: HttpRequest) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if wanted and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    return reverse("home")


def _code_error(result: factor.Result) -> str:
    if result.outcome is factor.Outcome.THROTTLED:
        return f"Too many wrong codes: wait {result.wait} seconds, then try again."
    return "That code is not right. Check the time on your phone, or use a recovery code."


def _not_this_page(request: HttpRequest, next_url: str, *, page: str) -> HttpResponse | None:
    """Where a second-factor page (`page`, by URL name) sends whom it is not for: to their own
    (verification once they have an authenticator, enrolment before), or to the locked page
    while their account is locked out. None: this page is theirs."""
    user = request.user
    theirs = factor.second_factor_page(request, user)
    if theirs != reverse(page):
        return redirect(f"{theirs}?{urlencode({'next': next_url})}")
    wait = lockout_wait(request=request, subject=user.get_username())
    if wait is not None:
        return locked_page(request, wait)
    return None


@never_cache
@login_required
def second_factor_verify(request: HttpRequest) -> HttpResponse:
    """The second step of signing in: a code from the authenticator, or a recovery code."""
    user, next_url = request.user, _next(request)
    # is_verified: django-otp's middleware puts it on the user; the package is untyped.
    if user.is_verified() or not factor.second_factor_required(user):  # type: ignore[union-attr]
        return redirect(next_url)
    if (elsewhere := _not_this_page(request, next_url, page="second-factor")) is not None:
        return elsewhere
    error = ""
    if request.method == "POST":
        result = factor.second_factor_verify(
            request=request, user=user, typed=str(request.POST.get("code", ""))
        )
        if result.outcome is factor.Outcome.RECOVERY_CODE:
            messages.warning(
                request,
                f"You signed in with a recovery code; {result.remaining} left. If your phone "
                "is lost, ask a governance admin to reset your second factor.",
            )
        if result.ok:
            return redirect(next_url)
        if result.outcome is factor.Outcome.LOCKED_OUT:
            return locked_page(request, result.wait or 60)
        error = _code_error(result)
    return render(
        request,
        "registration/second_factor.html",
        {"next": next_url, "error": error},
        status=400 if error else 200,
    )


@never_cache
@login_required
def second_factor_enrol(request: HttpRequest) -> HttpResponse:
    """Enrolment: scan the key (or type it), confirm with a code, receive the recovery codes."""
    user, next_url = request.user, _next(request)
    if not factor.second_factor_required(user):
        return redirect(next_url)
    if (elsewhere := _not_this_page(request, next_url, page="second-factor-enrol")) is not None:
        return elsewhere
    error = ""
    if request.method == "POST":
        result, codes = factor.second_factor_enrol(
            request=request, user=user, typed=str(request.POST.get("code", ""))
        )
        if result.ok:
            return render(
                request,
                "registration/recovery_codes.html",
                {"codes": codes, "next": next_url},
            )
        if result.outcome is factor.Outcome.LOCKED_OUT:
            return locked_page(request, result.wait or 60)
        error = _code_error(result)
    device = factor.second_factor_enrolment(user=user)
    secret = base64.b32encode(device.bin_key).decode()
    uri = device.config_url
    svg = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, border=2).to_string()
    return render(
        request,
        "registration/second_factor_enrol.html",
        {
            "next": next_url,
            "error": error,
            "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
            "uri": uri,
            "qr": "data:image/svg+xml;base64," + base64.b64encode(svg).decode(),
        },
        status=400 if error else 200,
    )


class SignOutView(auth_views.LogoutView):
    def post(self, request, *args, **kwargs):
        user = request.user
        with transaction.atomic():
            if user.is_authenticated:
                audit_record(
                    actor=user,
                    action="auth.signed_out",
                    target=Target.of(user),
                    data=_client(request),
                )
            return super().post(request, *args, **kwargs)


class TokenView(oauth2_views.TokenView):
    """DOT's `POST /o/token/`, with wrong client secrets counted per client and address
    (integrations.lockout): DOT checks a secret itself, never through Django's authenticate."""

    def post(self, request, *args, **kwargs):
        subject = client_subject(request)
        wait = lockout_wait(request=request, subject=subject)
        if wait is not None:
            return locked_problem(request, wait)
        response = super().post(request, *args, **kwargs)
        if response.status_code == 401 and _oauth_error(response) == "invalid_client":
            wait = lockout_fail(request=request, subject=subject)
            if wait is not None:
                return locked_problem(request, wait)
        return response


def _oauth_error(response: HttpResponse) -> str:
    try:
        return str(json.loads(response.content).get("error", ""))
    except (ValueError, AttributeError):
        return ""
