"""Who calls /mcp: a bearer token, as the MCP authorization spec has it (no session cookies).
An OAuth2 access token from Warden's own authorization server or a personal access token,
found by the REST API's own authentications (integrations.api.auth: the same lockout on
unknown tokens, the same account checks), holding the scope `tools:call`.

A request without a usable token is answered 401 with `WWW-Authenticate: Bearer
resource_metadata=...` (RFC 9728), which is how an MCP client finds the authorization server;
a token without the scope, 403 `insufficient_scope`."""

from __future__ import annotations

import io
import json

from django.core.handlers.asgi import ASGIRequest
from rest_framework import exceptions

from integrations.api.auth import (
    ApplicationOAuth2Authentication,
    PersonalAccessTokenAuthentication,
)
from integrations.mcp.catalogue import Caller

SCOPE = "tools:call"
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"


class Refused(Exception):
    """The request is answered with `status` and a problem document, before any MCP."""

    def __init__(self, status: int, detail: str, *, challenge: str = "", retry_after=None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.challenge = challenge
        self.retry_after = retry_after

    def response(self, scope) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        titles = {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests"}
        body = {
            "type": "about:blank",
            "title": titles.get(self.status, "Refused"),
            "status": self.status,
            "detail": self.detail,
        }
        headers = [(b"content-type", b"application/problem+json")]
        if self.status in (401, 403):
            metadata = f"{base_url(scope)}{METADATA_PATH}"
            challenge = f'Bearer resource_metadata="{metadata}"'
            if self.challenge:
                challenge += f", {self.challenge}"
            headers.append((b"www-authenticate", challenge.encode()))
        if self.retry_after is not None:
            headers.append((b"retry-after", str(int(self.retry_after)).encode()))
        return self.status, headers, json.dumps(body).encode()


def base_url(scope) -> str:
    """This server's origin as the client reached it (daphne's --proxy-headers behind one)."""
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1")
    if not host:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def authenticate(scope) -> Caller:
    """The caller of the request `scope` (headers only: the body is the MCP server's), or
    Refused. Runs on a thread: it reads the database."""
    request = ASGIRequest(scope, io.BytesIO())
    request.get_host()  # ALLOWED_HOSTS, as for every request Django serves (DisallowedHost)
    try:
        found = PersonalAccessTokenAuthentication().authenticate(request)
        if found is None:
            found = ApplicationOAuth2Authentication().authenticate(request)
    except exceptions.Throttled as exc:
        raise Refused(429, str(exc.detail), retry_after=getattr(exc, "wait", None)) from None
    except exceptions.AuthenticationFailed as exc:
        raise Refused(401, str(exc.detail), challenge='error="invalid_token"') from None
    if found is None:
        if request.headers.get("Authorization"):
            raise Refused(401, "the token is unknown, expired or revoked", challenge=_invalid())
        raise Refused(401, "a bearer token is required: OAuth2 or a personal access token")
    user, token = found
    if not token.is_valid([SCOPE]):
        raise Refused(
            403,
            f"the token lacks the scope {SCOPE!r}",
            challenge=f'error="insufficient_scope", scope="{SCOPE}"',
        )
    if hasattr(token, "application_id"):  # an OAuth2 access token
        return Caller(user=user, application_id=token.application_id)
    return Caller(user=user, personal_token_id=token.pk)


def _invalid() -> str:
    return 'error="invalid_token"'
