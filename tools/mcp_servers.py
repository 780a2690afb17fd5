"""MCP servers: long-lived client sessions, and syncing a server's tools into `Tool` rows.

The official `mcp` client is asynchronous and its session context must be entered and left in
one task, so each process runs one background event loop (`SessionPool`) in which an *owner
task* per server holds the session open; synchronous callers (Celery tasks, the admin) submit
calls to that loop and wait with a timeout. A session whose server died (a stdio process
killed, a connection closed) is reopened by the next call. Before a call with side effects the
session is pinged, so a server that died since the last call is restarted first; a call cut off
mid-way is retried on a new session only when the tool only reads (a write may have happened,
and is reported instead). Calls carry their idempotency key in the MCP request metadata.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from tools.models import MCPServer, MCPTransport, Tool, ToolKind, tool_name_validator
from tools.schemas import parameters_problem

if TYPE_CHECKING:
    from mcp import Client, StdioServerParameters
    from mcp.client import Transport
    from mcp_types import CallToolResult, RequestParamsMeta
    from mcp_types import Tool as MCPTool

    from tools.models import Secret

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT = 15.0  # seconds to start a server and finish the MCP handshake


class MCPUnavailable(Exception):
    """The server could not be reached or started; the message is for the admin and model."""


# --- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to reach a server, resolved in the caller's thread (the database and the secrets
    are read there, never in the event loop)."""

    pk: int  # one session per server
    name: str
    fingerprint: str  # of the configuration and secrets: a change replaces the session
    transport: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # secrets among them
    url: str = ""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    allow_networks: tuple[str, ...] = ()

    @classmethod
    def of(cls, server: MCPServer) -> ServerSpec:
        fields: dict[str, Any]
        if server.transport == MCPTransport.STDIO:
            fields = {
                "command": server.command,
                "args": tuple(str(a) for a in server.arguments),
                "env": tuple(sorted(_environment(server).items())),
            }
        else:
            fields = {
                "url": server.url,
                "headers": tuple(sorted(_auth_headers(server).items())),
                "allow_networks": tuple(server.allow_networks),
            }
        identity = json.dumps([server.transport, fields], sort_keys=True).encode()
        fingerprint = hmac.new(settings.SECRET_KEY.encode(), identity, "sha256").hexdigest()
        return cls(
            pk=server.pk,
            name=server.name,
            fingerprint=fingerprint,
            transport=server.transport,
            **fields,
        )


@dataclass
class _Session:
    client: Client
    stop: asyncio.Event
    owner: asyncio.Task[None]
    fingerprint: str
    dead: bool = False


class SessionPool:
    """One open session per MCP server configuration, in a background event loop."""

    def __init__(self) -> None:
        self._sessions: dict[int, _Session] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp", daemon=True)
        self._thread.start()

    def call_tool(
        self,
        server: ServerSpec,
        name: str,
        arguments: dict[str, Any],
        *,
        meta: RequestParamsMeta,
        timeout: float,
        writes: bool,
    ) -> CallToolResult:
        """The tool's `CallToolResult`; raises MCPUnavailable, or mcp's MCPError."""
        return self._wait(self._call(server, name, arguments, meta, timeout, writes), timeout)

    def list_tools(self, server: ServerSpec, *, timeout: float = 30.0) -> list[MCPTool]:
        return self._wait(self._list(server), timeout)

    def close(self) -> None:
        async def close_all() -> None:
            for session in self._sessions.values():
                session.stop.set()
            owners = [s.owner for s in self._sessions.values()]
            await asyncio.gather(*owners, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._wait(close_all(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _wait(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout + 2 * CONNECT_TIMEOUT + 5)
        except TimeoutError:
            future.cancel()
            raise MCPUnavailable("the MCP server did not answer in time") from None

    async def _call(
        self,
        server: ServerSpec,
        name: str,
        arguments: dict[str, Any],
        meta: RequestParamsMeta,
        timeout: float,
        writes: bool,
    ) -> CallToolResult:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        for attempt in (1, 2):
            session = await self._session(server)
            try:
                if writes:  # a server that died since the last call is restarted first
                    await session.client.send_ping()
            except MCPError as error:
                if error.code != CONNECTION_CLOSED:
                    raise
                session.dead = True
                continue
            try:
                return await session.client.call_tool(
                    name, arguments, read_timeout_seconds=timeout, meta=meta
                )
            except MCPError as error:
                if error.code != CONNECTION_CLOSED:
                    raise
                session.dead = True  # the next call reopens it
                if writes or attempt == 2:
                    closed = f"the MCP server {server.name} closed the connection during the call"
                    raise MCPUnavailable(closed) from None
        raise MCPUnavailable(f"the MCP server {server.name} keeps closing the connection")

    async def _list(self, server: ServerSpec) -> list[MCPTool]:
        session = await self._session(server)
        tools: list[MCPTool] = []
        cursor: str | None = None
        while True:  # every page
            page = await session.client.list_tools(cursor=cursor, cache_mode="refresh")
            tools += page.tools
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def _session(self, server: ServerSpec) -> _Session:
        lock = self._locks.setdefault(server.pk, asyncio.Lock())
        async with lock:
            session = self._sessions.get(server.pk)
            if (
                session is not None
                and not session.dead
                and not session.owner.done()
                and session.fingerprint == server.fingerprint
            ):
                return session
            if session is not None:  # dead or reconfigured: close it (pipes, the process)
                session.stop.set()
                await asyncio.wait([session.owner], timeout=5)
                del self._sessions[server.pk]
            ready: asyncio.Future[Client] = self._loop.create_future()
            stop = asyncio.Event()
            owner = asyncio.create_task(self._own(_transport(server), ready, stop))
            try:
                client = await asyncio.wait_for(ready, 2 * CONNECT_TIMEOUT)
            except BaseException as error:
                owner.cancel()
                raise MCPUnavailable(_connect_problem(server, error)) from None
            session = _Session(client, stop, owner, server.fingerprint)
            self._sessions[server.pk] = session
            return session

    async def _own(
        self,
        transport: contextlib.AbstractAsyncContextManager[StdioServerParameters | Transport],
        ready: asyncio.Future[Client],
        stop: asyncio.Event,
    ) -> None:
        from mcp import Client

        try:
            async with (
                transport as target,
                Client(target, read_timeout_seconds=CONNECT_TIMEOUT) as client,
            ):
                ready.set_result(client)
                await stop.wait()
        except BaseException as error:  # a failed start arrives as an ExceptionGroup
            if not ready.done():
                ready.set_exception(error)
            elif not isinstance(error, asyncio.CancelledError):
                log.info("MCP session ended: %s", _first_cause(error))


_pool: SessionPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def session_pool() -> SessionPool:
    """This process's pool (a forked Celery child makes its own)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = SessionPool(), os.getpid()
            atexit.register(_pool.close)
        return _pool


@contextlib.asynccontextmanager
async def _transport(server: ServerSpec) -> AsyncIterator[StdioServerParameters | Transport]:
    """What `mcp.Client` connects through: a stdio process or a streamable-HTTP endpoint."""
    if server.transport == MCPTransport.STDIO:
        from mcp import StdioServerParameters

        yield StdioServerParameters(
            command=server.command, args=list(server.args), env=dict(server.env)
        )
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from tools.outbound import check_url, guarded_async_transport

    check_url(server.url)
    async with httpx2.AsyncClient(
        headers=dict(server.headers),
        timeout=httpx2.Timeout(CONNECT_TIMEOUT, read=300),  # the SDK's: streams stay open
        transport=guarded_async_transport(server.allow_networks),
        trust_env=False,  # no proxy from the environment around the check
    ) as http:
        yield streamable_http_client(server.url, http_client=http)


def _environment(server: MCPServer) -> dict[str, str]:
    """The server's variables, a value "secret:NAME" replaced by that secret, on top of the
    few the SDK passes by default (PATH, HOME, ...), never Warden's own environment."""
    from mcp.client.stdio import get_default_environment

    from tools.models import Secret

    environment = get_default_environment()
    for name, value in server.environment.items():
        if isinstance(value, str) and value.startswith("secret:"):
            secret = Secret.objects.filter(name=value.removeprefix("secret:")).first()
            if secret is None:
                raise MCPUnavailable(f"the secret {value.removeprefix('secret:')!r} is missing")
            value = _reveal(secret)
        environment[name] = str(value)
    return environment


def _auth_headers(server: MCPServer) -> dict[str, str]:
    secret = server.auth_secret
    if secret is None:
        return {}
    value = _reveal(secret)
    if secret.kind == "bearer":
        return {"Authorization": f"Bearer {value}"}
    if secret.kind == "basic":
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}
    return {"Authorization": value}


def _reveal(secret: Secret) -> str:
    from tools.secrets import SecretError

    try:
        return secret.reveal()
    except SecretError as error:
        raise MCPUnavailable(str(error)) from None


def _first_cause(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _connect_problem(server: ServerSpec, error: BaseException) -> str:
    from tools.outbound import OutboundError

    cause = _first_cause(error)
    if isinstance(cause, MCPUnavailable | OutboundError):
        return str(cause)
    if isinstance(cause, socket.gaierror):
        return f"the host of MCP server {server.name} does not resolve"
    if isinstance(cause, FileNotFoundError):
        return f"the command {server.command!r} of MCP server {server.name} was not found"
    if isinstance(cause, TimeoutError | asyncio.TimeoutError):
        return f"MCP server {server.name} did not finish starting in {CONNECT_TIMEOUT:g} s"
    message = getattr(cause, "message", None) or type(cause).__name__
    return f"MCP server {server.name} could not be reached ({message})"


# --- syncing tools ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncReport:
    created: list[str]
    updated: list[str]
    disabled: list[str]
    skipped: list[str]  # tools whose schema cannot be used, with the reason

    def __str__(self) -> str:
        text = (
            f"{len(self.created)} new (disabled until enabled), {len(self.updated)} updated, "
            f"{len(self.disabled)} gone from the server (disabled)"
        )
        return text + (f"; skipped: {', '.join(self.skipped)}" if self.skipped else "")


def mcp_server_sync(*, server: MCPServer, actor: Any) -> SyncReport:
    """List the server's tools and mirror them as `Tool` rows named "<server>__<tool>": new ones
    arrive disabled, changed ones are updated (their version changes), ones the server no
    longer offers are disabled, never deleted. Records the outcome on the server; audited."""
    from mcp.shared.exceptions import MCPError

    try:
        listed = session_pool().list_tools(ServerSpec.of(server))
    except (MCPUnavailable, MCPError) as error:
        problem = MCPUnavailable(str(getattr(error, "message", None) or error))
        MCPServer.objects.filter(pk=server.pk).update(status=f"Sync failed: {problem}"[:300])
        raise problem from None
    created: list[str] = []
    updated: list[str] = []
    disabled: list[str] = []
    skipped: list[str] = []
    with transaction.atomic(durable=True):
        existing = {t.config.get("tool"): t for t in server.tools.select_for_update()}
        for remote in listed:
            schema = dict(remote.input_schema or {"type": "object"})
            if contract_problem := parameters_problem(schema):
                skipped.append(f"{remote.name} ({contract_problem})")
                continue  # an unusable contract: left as it was (a vanished one: disabled)
            tool = existing.pop(remote.name, None) or Tool(
                kind=ToolKind.MCP, mcp_server=server, name=_tool_name(server, remote.name)
            )
            description = (remote.description or remote.name)[:2000]
            changed = (tool.description, tool.parameters) != (description, schema)
            tool.description, tool.parameters = description, schema
            tool.config = {"tool": remote.name}
            if tool.pk is None:
                tool.save()
                created.append(tool.name)
            elif changed:
                tool.save()
                updated.append(tool.name)
        for tool in existing.values():
            if tool.enabled:
                tool.enabled = False
                tool.save(update_fields=["enabled", "updated_at"])
                disabled.append(tool.name)
        report = SyncReport(created, updated, disabled, skipped)
        server.synced_at = timezone.now()
        server.status = f"Synced: {len(listed)} tool(s); {report}"[:300]
        server.save(update_fields=["synced_at", "status"])
        audit_record(
            actor=actor,
            action="mcp_server.synced",
            target=server,
            data={
                "created": created,
                "updated": updated,
                "disabled": disabled,
                "skipped": skipped,
            },
        )
    return report


def _tool_name(server: MCPServer, name: str) -> str:
    """A model-facing name, unique across servers: "<server>__<tool>", cut to 64 characters."""
    candidate = f"{server.name}__{name}".replace(".", "_")
    candidate = "".join(c if c.isalnum() or c in "_-" else "_" for c in candidate)[:64]
    tool_name_validator(candidate)
    if Tool.objects.filter(name=candidate).exists():  # a clash after cutting: make it unique
        suffix = hashlib.sha256(f"{server.pk}:{name}".encode()).hexdigest()[:6]
        candidate = f"{candidate[:57]}_{suffix}"
    return candidate
