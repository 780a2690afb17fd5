"""Scope checks beyond one scope per view: any of several scopes, one per method."""

from __future__ import annotations

from rest_framework.permissions import BasePermission


class HasAnyScope(BasePermission):
    """The token holds one of the view's `required_scopes` for this method (a dict of method
    to scopes, `"*"` for every other method); a browser session needs none. Scopes only
    narrow: the view's access checks still decide what the account may do."""

    message = "the token lacks the scope this endpoint requires"

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if token is None or not hasattr(token, "scope"):
            return request.user is not None and request.user.is_authenticated
        scopes = view.required_scopes.get(request.method, view.required_scopes["*"])
        self.message = "the token lacks the scope " + " or ".join(repr(s) for s in scopes)
        return any(token.is_valid([scope]) for scope in scopes)
