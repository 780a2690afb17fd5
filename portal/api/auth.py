"""Who an API request acts as, and what its token lets it do.

An OAuth2 token from the client-credentials grant has no user of its own: it acts as its
application's user (the integration's service account), so governance sees one account, and
a token never does more than that account may. Scopes narrow it further: an endpoint names the
scope it needs; a browser session (the user themself) needs none.
"""

from __future__ import annotations

from oauth2_provider.contrib.rest_framework import OAuth2Authentication
from rest_framework import exceptions
from rest_framework.permissions import BasePermission


class ApplicationOAuth2Authentication(OAuth2Authentication):
    def authenticate(self, request):
        found = super().authenticate(request)
        if found is None:
            return None
        user, token = found
        if user is None:  # client credentials: the application's account
            user = token.application.user if token.application_id else None
        if user is None or not user.is_active:
            raise exceptions.AuthenticationFailed("the token's account is missing or disabled")
        return user, token


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


# The schema describes this authentication as drf-spectacular describes DOT's own.
from drf_spectacular.contrib.django_oauth_toolkit import DjangoOAuthToolkitScheme  # noqa: E402


class ApplicationOAuth2Scheme(DjangoOAuthToolkitScheme):
    target_class = ApplicationOAuth2Authentication
