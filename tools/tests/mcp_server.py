"""A small MCP server built with the official SDK, for the tests: run as a script it serves
stdio; `serve_http` serves it over streamable HTTP on loopback, behind a bearer token.
WARDEN_TEST_TOOLS (comma-separated) limits which tools it offers."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context


def build() -> MCPServer:
    server = MCPServer("warden-test", version="1.0")
    offered = set(filter(None, os.environ.get("WARDEN_TEST_TOOLS", "").split(",")))

    def tool(function):
        if not offered or function.__name__ in offered:
            server.tool()(function)
        return function

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool
    async def echo_meta(ctx: Context) -> dict[str, Any]:
        """The request metadata this call arrived with."""
        meta = ctx.request_context.meta
        return {"idempotency_key": (dict(meta) if meta else {}).get("idempotency_key")}

    @tool
    async def slow(seconds: float) -> str:
        """Wait, then answer."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @tool
    def pid() -> int:
        """This server's process id."""
        return os.getpid()

    return server


class BearerGate:
    """Refuse HTTP requests without the expected bearer token."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and dict(scope["headers"]).get(b"authorization") != self.expected
        ):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


def serve_http(token: str):
    """Start the server over streamable HTTP; (uvicorn server, URL of its endpoint)."""
    import uvicorn

    app = BearerGate(build().streamable_http_app(), token)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/mcp"


if __name__ == "__main__":
    build().run()  # stdio
