from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from audit.services import SYSTEM, Target, audit_record


@login_required
def home(request: HttpRequest) -> HttpResponse:
    roles = list(request.user.groups.order_by("name").values_list("name", flat=True))
    return render(request, "portal/home.html", {"roles": roles})


def _client(request: HttpRequest) -> dict[str, str]:
    return {
        "address": request.META.get("REMOTE_ADDR", ""),
        "agent": request.headers.get("User-Agent", "")[:200],
    }


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
        username = str(form.data.get("username", ""))[:150]
        with transaction.atomic():
            audit_record(
                actor=SYSTEM,
                action="auth.sign_in_failed",
                target=Target("auth.user", "", username),
                data={"username": username, **_client(self.request)},
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
