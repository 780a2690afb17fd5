"""Who an API request acts as, and what its token lets it do.

An OAuth2 token from the client-credentials grant has no user of its own: it acts as its
application's user (the integration's service account), so governance sees one account, and
a token never does more than that account may. Scopes narrow it further: an endpoint names the
scope it needs; a browser session (the user themself) needs none.
"""

from __future__ import annotations

from oauth2_provider.contrib.rest_framework import OAuth2Authentication
from oauth2_provider.scopes import SettingsScopes
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from integrations.lockout import BEARER_SUBJECT, lockout_fail, lockout_wait
from integrations.tokens import PREFIX, token_find


def _refuse_if_locked(request) -> None:
    """Before a bearer token is looked up: an address that sent too many unknown tokens is told
    to wait (429, Retry-After), whatever this one is, so guessing learns nothing meanwhile."""
    wait = lockout_wait(request=request, subject=BEARER_SUBJECT)
    if wait is not None:
        raise _locked(wait)


def _failed(request) -> None:
    """A token that matched nothing counts against its address (integrations.lockout); the failure
    that reaches the limit is answered as the lockout."""
    wait = lockout_fail(request=request, subject=BEARER_SUBJECT)
    if wait is not None:
        raise _locked(wait)


def _locked(wait: int) -> exceptions.Throttled:
    return exceptions.Throttled(
        wait, detail="too many unknown tokens from this address: try again later"
    )


class ApplicationOAuth2Authentication(OAuth2Authentication):
    def authenticate(self, request):
        # Tokens travel in the header only (RFC 9700): without one, DOT is not asked, and so
        # never parses a body before the request is authenticated.
        if get_authorization_header(request).partition(b" ")[0].lower() != b"bearer":
            return None
        _refuse_if_locked(request)
        found = super().authenticate(request)
        if found is None:
            _failed(request)  # counted; DRF then answers 401 as before
            return None
        user, token = found
        if user is None:  # client credentials: the application's account
            user = token.application.user if token.application_id else None
        if user is None or not user.is_active:
            raise exceptions.AuthenticationFailed("the token's account is missing or disabled")
        return user, token


class ApplicationScopesBackend(SettingsScopes):
    """DOT's SCOPES_BACKEND_CLASS: an application may ask only for the scopes a governance
    admin allowed it (integrations.models.ApplicationScopes; none until then)."""

    def get_available_scopes(self, application=None, request=None, *args, **kwargs):
        everything = super().get_available_scopes(application, request, *args, **kwargs)
        if application is None:
            return everything
        from integrations.models import ApplicationScopes

        allowed = ApplicationScopes.objects.filter(application=application).first()
        return [s for s in everything if allowed is not None and s in allowed.scopes]


class PersonalAccessTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer wdn_pat_…`: a user's personal access token, as its user."""

    def authenticate(self, request):
        kind, _, secret = get_authorization_header(request).decode("latin-1").partition(" ")
        if kind.lower() != "bearer" or not secret.startswith(PREFIX):
            return None  # not ours: an OAuth2 token, or no credentials
        _refuse_if_locked(request)
        token = token_find(secret.strip())
        if token is None:
            _failed(request)
            raise exceptions.AuthenticationFailed("the token is unknown, expired or revoked")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("the token's account is disabled")
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def scopes_for(view, method: str) -> list[str]:
    """The scopes that admit a request to `view`: its `required_scope`, or any one of
    `required_scopes[method]` (a dict of method to scopes, `"*"` for the other methods)."""
    by_method = getattr(view, "required_scopes", None)
    if by_method is None:
        return [view.required_scope]
    return list(by_method.get(method.upper(), by_method["*"]))


class HasScope(BasePermission):
    """The token holds a scope that admits the request (a browser session needs none). Scopes
    only narrow: the view's access checks still decide what the account may do."""

    message = "the token lacks the scope this endpoint requires"

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if token is None or not hasattr(token, "scope"):
            return request.user is not None and request.user.is_authenticated
        scopes = scopes_for(view, request.method)
        self.message = "the token lacks the scope " + " or ".join(repr(s) for s in scopes)
        return any(token.is_valid([scope]) for scope in scopes)


# The schema describes these authentications (DOT's own as drf-spectacular describes it).
from drf_spectacular.contrib.django_oauth_toolkit import DjangoOAuthToolkitScheme  # noqa: E402
from drf_spectacular.extensions import OpenApiAuthenticationExtension  # noqa: E402


class ApplicationOAuth2Scheme(DjangoOAuthToolkitScheme):
    # The base names its class by path (so its attribute is typed str); a class is as good.
    target_class = ApplicationOAuth2Authentication  # type: ignore[assignment]

    def get_security_requirement(self, auto_schema):
        # Any one of the scopes admits it: one requirement each (a list in one would mean all).
        return [{self.name: [one]} for one in scopes_for(auto_schema.view, auto_schema.method)]


class PersonalAccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = PersonalAccessTokenAuthentication
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal access token (`wdn_pat_…`), made on /account/tokens/.",
        }
