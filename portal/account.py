"""The signed-in user's own settings: personal access tokens for the API."""

from __future__ import annotations

from typing import TypedDict

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.text import capfirst
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from integrations.tokens import MAX_DAYS, TokenError, token_create, token_revoke, tokens_of

DAYS = (7, 30, 90, 366)


@never_cache
class _Typed(TypedDict):
    """What the token form shows typed in."""

    name: str
    scopes: list[str]
    days: str


@login_required
@require_http_methods(["GET", "POST"])
def tokens_page(request: HttpRequest) -> HttpResponse:
    """List, make and revoke one's tokens; a new token's secret is shown on this response only
    (never stored, never in a redirect or the session)."""
    typed: _Typed = {"name": "", "scopes": [], "days": "90"}
    secret, status = None, 200
    if request.method == "POST":
        typed = {
            "name": request.POST.get("name", ""),
            "scopes": request.POST.getlist("scopes"),
            "days": request.POST.get("days", ""),
        }
        try:
            days = int(typed["days"]) if typed["days"].isascii() and typed["days"].isdigit() else 0
            if "\x00" in typed["name"]:
                raise TokenError("the name contains a NUL character")
            _, secret = token_create(
                user=request.user, name=typed["name"], scopes=typed["scopes"], days=days
            )
        except TokenError as exc:
            messages.error(request, capfirst(str(exc)))
            status = 400
        else:
            typed = {"name": "", "scopes": [], "days": "90"}
    context = {
        "tokens": tokens_of(request.user),
        "scopes": settings.OAUTH2_PROVIDER["SCOPES"].items(),
        "days": [d for d in DAYS if d <= MAX_DAYS],
        "typed": typed,
        "secret": secret,
    }
    return render(request, "portal/tokens.html", context, status=status)


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, pk: int) -> HttpResponse:
    token = tokens_of(request.user).filter(pk=pk).first()  # one's own only
    if token is None:
        raise Http404("no such token")
    token_revoke(token=token, actor=request.user)
    messages.success(request, f"Revoked: {token.name}.")
    return redirect("account-tokens")
