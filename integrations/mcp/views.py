"""How an MCP client finds where to get a token (the MCP authorization spec): the protected
resource's metadata (RFC 9728) at /.well-known/oauth-protected-resource/mcp, which names
Warden as its authorization server, whose own metadata (RFC 8414) django-oauth-toolkit serves
at /.well-known/oauth-authorization-server (config.urls)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.views import OAuthProtectedResourceMetadataView

from integrations.mcp.auth import SCOPE


class MCPResourceMetadata(OAuthProtectedResourceMetadataView):
    """/mcp as a protected resource: its identifier comes from the request's path (DOT's
    rule: the path after the well-known prefix), Warden's origin is its authorization
    server, and `tools:call` is the scope it asks for."""

    def get_authorization_servers(self, request):
        return [f"{request.scheme}://{request.get_host()}"]

    def get_scopes_supported(self):
        return [SCOPE]

    def get_resource_name(self):
        return "Warden MCP server"


@csrf_exempt
def registration_management(request, client_id: str) -> JsonResponse:
    """RFC 7592's read, change and delete of a registration: not offered (an admin changes a
    client, audited there), so a registration token cannot move a client's redirect URIs."""
    return JsonResponse(
        {"error": "not_found", "error_description": "registrations are managed by an admin"},
        status=404,
    )
