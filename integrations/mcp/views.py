"""How an MCP client finds out where to get a token (the MCP authorization spec): the protected
resource's metadata (RFC 9728), which names Warden as its authorization server, and that
server's metadata (RFC 8414): django-oauth-toolkit's endpoints, S256 PKCE only."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from integrations.mcp.auth import SCOPE


def _origin(request) -> str:
    return f"{request.scheme}://{request.get_host()}"


@require_GET
def protected_resource(request) -> JsonResponse:
    origin = _origin(request)
    return JsonResponse(
        {
            "resource": f"{origin}/mcp",
            "authorization_servers": [origin],
            "scopes_supported": [SCOPE],
            "bearer_methods_supported": ["header"],
            "resource_name": "Warden MCP server",
        }
    )


@require_GET
def authorization_server(request) -> JsonResponse:
    origin = _origin(request)
    return JsonResponse(
        {
            "issuer": origin,
            "authorization_endpoint": f"{origin}/o/authorize/",
            "token_endpoint": f"{origin}/o/token/",
            "revocation_endpoint": f"{origin}/o/revoke_token/",
            "introspection_endpoint": f"{origin}/o/introspect/",
            "scopes_supported": list(settings.OAUTH2_PROVIDER["SCOPES"]),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "authorization_response_iss_parameter_supported": True,
        }
    )
