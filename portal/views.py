import json

from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils.crypto import salted_hmac
from django.views.defaults import page_not_found
from django.views.defaults import server_error as default_server_error
from oauth2_provider import views as oauth2_views

from audit.services import SYSTEM, Target, audit_record
from governance.budgets import usage_for
from portal.lockout import client_subject, locked_problem, lockout_fail, lockout_wait

API_PREFIXES = ("/api/", "/v1/")


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    """404: a problem document for the API, the page for people."""
    if request.path.startswith(API_PREFIXES):
        from portal.api.problems import problem_response

        return problem_response(request, 404, "not-found", "no such resource")
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: a problem document for the API (with the request id), the page for people."""
    if request.path.startswith(API_PREFIXES):
        from portal.api.problems import problem_response

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


@login_required
def home(request: HttpRequest) -> HttpResponse:
    roles = list(request.user.groups.order_by("name").values_list("name", flat=True))
    usage = usage_for(request.user)
    return render(request, "portal/home.html", {"roles": roles, "usage": usage})


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
    (portal.lockout): DOT checks a secret itself, never through Django's authenticate."""

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
