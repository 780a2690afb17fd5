"""The SSO routes: start (state, nonce and PKCE verifier into the session, off to the
provider) and callback (the code exchanged, the ID token checked, the person signed in).
A failure is a page that says what went wrong, never a traceback or a 500."""

from __future__ import annotations

import logging

import requests
from django.conf import settings
from django.contrib import auth
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render, resolve_url
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from mozilla_django_oidc.views import OIDCAuthenticationRequestView

from audit.services import SYSTEM, Target, audit_record
from sso.backend import OIDCBackend
from sso.discovery import DiscoveryError, provider_config
from sso.middleware import schedule_renewal
from sso.services import SignInRefused
from tools import secrets

logger = logging.getLogger(__name__)
BACKEND = "sso.backend.OIDCBackend"


def sso_enabled() -> bool:
    return bool(settings.WARDEN_OIDC_ISSUER)


@method_decorator(never_cache, name="dispatch")
class SignInStart(OIDCAuthenticationRequestView):
    """GET /sso/login/?next=...: mozilla-django-oidc's authorization request (state, nonce,
    S256 PKCE), to the endpoint discovery found."""

    def __init__(self, *args, **kwargs):
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)  # no settings read

    def get(self, request):
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider_config().authorization_endpoint
        except DiscoveryError as exc:
            return refused(request, str(exc), status=502)
        self.OIDC_RP_CLIENT_ID = settings.WARDEN_OIDC_CLIENT_ID
        return super().get(request)


@never_cache
def sign_in_callback(request: HttpRequest) -> HttpResponse:
    """GET /sso/callback/?code=...&state=...: where the provider sends the browser back."""
    if not sso_enabled():
        raise Http404("single sign-on is not configured")
    if request.method != "GET":
        return refused(request, "the provider must send the browser back with GET", status=405)
    # The state is used once: taken out of the session whatever happens next.
    states = request.session.get("oidc_states")
    state = request.GET.get("state", "")
    entry = states.pop(state, None) if isinstance(states, dict) and state else None
    if entry is None:
        return refused(
            request,
            "this sign-in was not started in this browser, or its answer was already used "
            "(state); start again",
            status=400,
        )
    request.session["oidc_states"] = states
    if request.GET.get("error"):
        error = request.GET.get("error", "")[:100]
        description = request.GET.get("error_description", "")[:200]
        return refused(request, f"the provider refused the sign-in: {error} {description}")
    if not request.GET.get("code"):
        return refused(request, "the provider sent no authorization code", status=400)
    backend = OIDCBackend()
    try:
        user = backend.authenticate(
            request,
            nonce=entry.get("nonce"),
            code_verifier=entry.get("code_verifier"),
            sso_callback=True,
        )
    except SignInRefused as exc:
        return refused(request, str(exc))
    except DiscoveryError as exc:
        return refused(request, str(exc), status=502)
    except requests.HTTPError as exc:
        code = getattr(exc.response, "status_code", "")
        return refused(request, f"the provider refused Warden's request (HTTP {code})", status=502)
    except (requests.RequestException, ValueError) as exc:
        reason = f"the provider could not be reached or answered badly ({type(exc).__name__})"
        return refused(request, reason, status=502)
    if user is None:
        return refused(request, "the provider's answer signs nobody in")
    next_url = request.session.get("oidc_login_next")
    auth.login(request, user, backend=BACKEND)
    refresh = backend.token_info.get("refresh_token")
    request.session["sso"] = {
        "issuer": backend.config.issuer if backend.config else "",
        "subject": str(backend.claims.get("sub", "")),
        # Sessions are rows in the database: the refresh token is kept there encrypted.
        "refresh_token": secrets.encrypt(str(refresh)) if refresh else "",
    }
    schedule_renewal(request.session)
    return HttpResponseRedirect(next_url or resolve_url(settings.LOGIN_REDIRECT_URL))


def refused(request: HttpRequest, reason: str, status: int = 403) -> HttpResponse:
    """The clear page for a failed SSO sign-in, and its audit event. Nobody is signed in by
    it; whoever was signed in already stays so (a link to a stale callback signs nobody out)."""
    reason = reason.replace("\x00", "")
    with transaction.atomic():
        audit_record(
            actor=SYSTEM,
            action="auth.sso_sign_in_refused",
            target=Target("sso.provider", "", settings.WARDEN_OIDC_ISSUER[:200]),
            data={"reason": reason, "address": request.META.get("REMOTE_ADDR", "")},
            stream="auth.sso",
        )
    logger.warning("single sign-on refused: %s", reason)
    return render(
        request,
        "sso/refused.html",
        {"reason": reason, "provider": settings.WARDEN_OIDC_PROVIDER_NAME},
        status=status,
    )
