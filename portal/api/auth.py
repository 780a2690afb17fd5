"""Who an API request acts as, and what its token lets it do.

An OAuth2 token from the client-credentials grant has no user of its own: it acts as its
application's user (the integration's service account), so governance sees one account, and
a token never does more than that account may. Scopes narrow it further: an endpoint names the
scope it needs; a browser session (the user themself) needs none.
"""

from __future__ import annotations

from oauth2_provider.contrib.rest_framework import OAuth2Authentication
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from portal.tokens import PREFIX, token_find


class ApplicationOAuth2Authentication(OAuth2Authentication):
    def authenticate(self, request):
        # Tokens travel in the header only (RFC 9700): without one, DOT is not asked, and so
        # never parses a body before the request is authenticated.
        if get_authorization_header(request).partition(b" ")[0].lower() != b"bearer":
            return None
        found = super().authenticate(request)
        if found is None:
            return None
        user, token = found
        if user is None:  # client credentials: the application's account
            user = token.application.user if token.application_id else None
        if user is None or not user.is_active:
            raise exceptions.AuthenticationFailed("the token's account is missing or disabled")
        return user, token


class PersonalAccessTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer wdn_pat_…`: a user's personal access token, as its user."""

    def authenticate(self, request):
        kind, _, secret = get_authorization_header(request).decode("latin-1").partition(" ")
        if kind.lower() != "bearer" or not secret.startswith(PREFIX):
            return None  # not ours: an OAuth2 token, or no credentials
        token = token_find(secret.strip())
        if token is None:
            raise exceptions.AuthenticationFailed("the token is unknown, expired or revoked")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("the token's account is disabled")
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class HasScope(BasePermission):
    """The view's `required_scope` is among the token's scopes (a session needs none)."""

    message = "the token lacks the scope this endpoint requires"

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if token is None or not hasattr(token, "scope"):
            return request.user is not None and request.user.is_authenticated
        required = view.required_scope
        self.message = f"the token lacks the scope {required!r}"
        return token.is_valid([required])


# The schema describes these authentications (DOT's own as drf-spectacular describes it).
from drf_spectacular.contrib.django_oauth_toolkit import DjangoOAuthToolkitScheme  # noqa: E402
from drf_spectacular.extensions import OpenApiAuthenticationExtension  # noqa: E402


class ApplicationOAuth2Scheme(DjangoOAuthToolkitScheme):
    target_class = ApplicationOAuth2Authentication

    def get_security_requirement(self, auto_schema):
        view = auto_schema.view
        scope = getattr(view, "required_scope", None)
        if scope is None:  # per method, any one of them: {"POST": [...], "*": [...]}
            by_method = getattr(view, "required_scopes", None) or {}
            method = auto_schema.method.upper()
            scopes = by_method.get(method, by_method.get("*", []))
            return [{self.name: [one]} for one in scopes] or {self.name: []}
        return {self.name: [scope]}


class PersonalAccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = PersonalAccessTokenAuthentication
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal access token (`wdn_pat_…`), made on /account/tokens/.",
        }
