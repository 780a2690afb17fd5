"""ASGI entry point: HTTP through Django (but /mcp, the MCP server's), websockets through
Channels.

Websocket routes come from the apps that own them (agents.routing); a connection to any other
path is refused.
"""

import gc
import json
import os
from http import HTTPStatus

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything imports models (consumers, the auth middleware).
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.WARDEN_WEB_DATABASE_POOL:
    # The web process takes its database connections from a pool (psycopg_pool, Django's
    # "pool" option): ASGI runs each request's and each websocket's database work on threads
    # that change, so without one every request and every websocket check connected anew
    # (CONN_MAX_AGE stays 0, as Django requires with a pool). Workers keep their persistent
    # connections instead (config.celery). Set here, before the first connection, so that
    # only the server process that loads the ASGI application has one.
    settings.DATABASES["default"]["OPTIONS"]["pool"] = settings.WARDEN_WEB_DATABASE_POOL

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from agents.routing import websocket_urlpatterns  # noqa: E402
from integrations.mcp.server import application as mcp_application  # noqa: E402
from portal.second_factor import SecondFactorWebsocketMiddleware  # noqa: E402
from portal.uploads import body_refusal  # noqa: E402


async def http_application(scope, receive, send):
    """/mcp is the MCP server's (integrations.mcp: the SDK's streamable HTTP transport); every
    other path is Django's, but a file attached in the chat that is too big (or says no length)
    is refused before its body is read (portal.uploads.body_refusal)."""
    if scope["path"] in ("/mcp", "/mcp/"):
        return await mcp_application(scope, receive, send)
    if (refused := body_refusal(scope)) is not None:
        return await _problem(send, *refused)
    return await django_asgi_app(scope, receive, send)


async def _problem(send, status: int, detail: str) -> None:
    """An RFC 9457 problem, sent without reading the request; the connection is closed after
    it (the body is never read)."""
    body = json.dumps(
        {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(SecondFactorWebsocketMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# Everything loaded so far (Django, the apps, their modules) lives as long as the process:
# moved out of the collector's sight, a full collection no longer walks it every few seconds
# while a thousand sockets are open. Live tokens' p99 went from 218-863 ms to 84-86 ms at 1,000
# sockets (bench/websocket_sessions.py, three runs against two).
gc.collect()
gc.freeze()
