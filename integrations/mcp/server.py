"""The MCP server at /mcp (streamable HTTP, the official `mcp` SDK's low-level server): each
caller sees the tools and agents they may call (integrations.mcp.catalogue), and every call is
a run, governed as an agent's tool call is (agents.calls; an agent asked as a tool is a run of
that agent). A call is answered when its run ends, or, past WARDEN_MCP_WAIT_SECONDS (a reviewer
has not decided yet, say), with a pending result naming the run and the approval's page; the
caller asks `warden_run_result` later. While it waits, the caller hears progress notifications
(if it asked for them with a progress token).

Both protocol eras are served: a handshake-era client (2025-06-18, 2025-11-25) opens a session
(Mcp-Session-Id; a few a minute per credential), bound to the credential that opened it and
kept by the web process that opened it (several web processes need sticky routing for such
clients); a client of the sessionless protocol (2026-07-28) names itself in each request's
`_meta`, and any process serves it. Either is recorded as an MCPSession."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any

import mcp_types as types
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import F
from django.utils import timezone
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from agents.models import FINAL_STATES, Run, RunState
from agents.selectors import access_run, releasing
from agents.services import RateLimited, RunError
from governance.access import NoAccess
from integrations.mcp.auth import Refused, authenticate, base_url
from integrations.mcp.catalogue import RESULT_TOOL, Caller, Entry, catalogue, entry
from integrations.models import MCPSession

logger = logging.getLogger(__name__)

SESSION_HEADER = "mcp-session-id"
PROGRESS_EVERY = 2.0  # seconds between progress notifications (and database looks) in a wait
_STATES = {
    RunState.QUEUED: "queued for a worker",
    RunState.RUNNING: "running",
    RunState.AWAITING_APPROVAL: "waiting for a reviewer to approve the call",
    RunState.AWAITING_REVIEW: "the answer is held for a reviewer",
}


def _database(function):
    """`function` on a thread of the pool (not the one thread every sync_to_async call of this
    process would share), its database connection given back afterwards."""
    return sync_to_async(releasing(function), thread_sensitive=False)


# What a call asked: who, through which client --------------------------------------------------


def _caller(ctx) -> Caller:
    return ctx.request.scope["warden.caller"]


def _client(ctx) -> str:
    """The client as it named itself: in the handshake (a session) or in the request's _meta."""
    params = getattr(ctx.session, "client_params", None)
    info: Any = params.client_info if params is not None else None
    if info is None and ctx.meta:
        info = ctx.meta.get("io.modelcontextprotocol/clientInfo")
    if info is None:
        return ""
    if isinstance(info, dict):
        name, version = info.get("name", ""), info.get("version", "")
    else:
        name, version = info.name, info.version
    return f"{name} {version}".strip()[:200]


def _session_key(caller: Caller, session_id: str | None, client: str) -> str:
    """The MCPSession of a request: a handshake-era client's session (its Mcp-Session-Id, which
    the SDK holds to the credential that opened it), or, sessionless, the client's credential
    and name. Hashed with the credential: a header names no one else's row, at any length."""
    if session_id:
        return "session:" + hashlib.sha256(f"{caller.credential}|{session_id}".encode()).hexdigest()
    return "client:" + hashlib.sha256(f"{caller.credential}|{client}".encode()).hexdigest()


def _seen(caller: Caller, session_id: str | None, client: str, protocol: str) -> None:
    """Note the client's session as seen now: its `last_seen_at` written at most once a minute,
    its calls counted."""
    key = _session_key(caller, session_id, client)
    now = timezone.now()
    if _recently_seen.get(key, 0.0) > time.monotonic() - 60:
        MCPSession.objects.filter(key=key).update(calls=F("calls") + 1)
        return
    if len(_recently_seen) > 10_000:  # a bound: at worst a write a call more
        _recently_seen.clear()
    _recently_seen[key] = time.monotonic()
    updated = MCPSession.objects.filter(key=key).update(
        last_seen_at=now, closed_at=None, calls=F("calls") + 1
    )
    if not updated:
        MCPSession.objects.get_or_create(
            key=key,
            defaults={
                "user": caller.user,
                "application_id": caller.application_id,
                "personal_token_id": caller.personal_token_id,
                "client": client,
                "protocol_version": protocol[:20],
                "last_seen_at": now,
                "calls": 1,
            },
        )


_recently_seen: dict[str, float] = {}


async def _note(ctx) -> None:
    protocol = ctx.protocol_version or ""
    # Only the handshake era has sessions; a header on any other request is no session's.
    session = ctx.request.headers.get(SESSION_HEADER) if protocol.startswith("2025-") else None
    await _database(_seen)(_caller(ctx), session, _client(ctx), protocol)


# The handlers ----------------------------------------------------------------------------------


async def _list_tools(ctx, params) -> types.ListToolsResult:
    await _note(ctx)
    entries = await _database(catalogue)(_caller(ctx))
    return types.ListToolsResult(tools=[_described(e) for e in entries])


def _described(found: Entry) -> types.Tool:
    hints = None
    if found.tool is not None:
        hints = types.ToolAnnotations(
            read_only_hint=found.read_only,
            destructive_hint=found.destructive,
            idempotent_hint=False,
            open_world_hint=True,
        )
    return types.Tool(
        name=found.name,
        description=found.description,
        input_schema=found.input_schema,
        annotations=hints,
    )


async def _call_tool(ctx, params) -> types.CallToolResult:
    await _note(ctx)
    caller = _caller(ctx)
    name, arguments = params.name, dict(params.arguments or {})
    found = await _database(entry)(caller, name)
    if found is None:  # not exposed, not the caller's, or no such tool: all alike
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")
    key = str((ctx.meta or {}).get("idempotency_key") or "")
    try:
        if found.tool is not None:
            run = await _database(_start_call)(caller, found.tool, arguments, _client(ctx), key)
        elif found.agent is not None:
            run = await _database(_start_ask)(caller, found.agent, arguments, _client(ctx), key)
        else:
            run = await _database(_own_run)(caller, arguments.get("run"))
    except RateLimited as exc:
        return _error(str(exc), code=exc.code, retry_after=exc.retry_after)
    except RunError as exc:
        return _error(str(exc), code=getattr(exc, "code", "refused"))
    except NoAccess:
        return _error(f"you have no run {arguments.get('run')}", code="not_found")
    run = await _wait(ctx, run)
    return await _database(_result)(run, base_url(ctx.request.scope))


def _start_call(caller: Caller, tool, arguments: dict, client: str, key: str) -> Run:
    from agents.calls import tool_call_start

    return tool_call_start(
        actor=caller.user,
        tool=tool,
        arguments=arguments,
        client=client,
        idempotency_key=key,
        client_application_id=caller.application_id,
    )


def _start_ask(caller: Caller, agent, arguments: dict, client: str, key: str) -> Run:
    from agents.calls import ask_question
    from agents.models import RunKind
    from agents.submit import run_submit

    question = ask_question(arguments)
    return run_submit(
        actor=caller.user,
        agent=agent,
        input=question,
        idempotency_key=key,
        surface="mcp",
        client_application_id=caller.application_id,
        stream=False,
        kind=RunKind.MCP,
        client=client,
    )


def _own_run(caller: Caller, run_id: Any) -> Run:
    """One of the caller's own MCP calls, made through the same client (the same OAuth2
    application, or a personal token): not their chats, nor another application's calls,
    which this token's scope and allowlist do not reach."""
    from agents.models import RunKind

    if isinstance(run_id, bool) or not isinstance(run_id, int):
        raise NoAccess("no such run")
    run = access_run(caller.user, run_id)
    if run.kind != RunKind.MCP or run.client_application_id != caller.application_id:
        raise NoAccess("no such run")
    return run


async def _wait(ctx, run: Run) -> Run:
    """The run once it ends, or as it stands after WARDEN_MCP_WAIT_SECONDS; a progress
    notification every PROGRESS_EVERY seconds meanwhile, saying where it stands. Follows the
    run's event log in Redis (agents.events), and asks the database on each event that may
    end it and every PROGRESS_EVERY seconds, so it ends even if Redis lost the events."""
    import redis

    from agents.events import stream_key
    from agents.selectors import run_current
    from governance.live import shared_redis_client

    if run.state in FINAL_STATES:
        return run
    started = time.monotonic()
    deadline = started + settings.WARDEN_MCP_WAIT_SECONDS
    client, key, last = shared_redis_client(), stream_key(run.pk), "0-0"
    said = ""
    while True:
        run = await _database(run_current)(run.pk)
        if run.state in FINAL_STATES:
            return run
        where = _STATES.get(RunState(run.state), str(run.state))
        if where != said or time.monotonic() - started >= PROGRESS_EVERY:
            said = where
            with contextlib.suppress(Exception):  # a client gone is the transport's to see
                await ctx.session.report_progress(
                    round(time.monotonic() - started, 1), None, f"run {run.pk}: {where}"
                )
        left = deadline - time.monotonic()
        if left <= 0:
            return run
        block = max(1, int(min(left, PROGRESS_EVERY) * 1000))
        try:
            found = await client.xread({key: last}, block=block)
        except redis.RedisError:  # a notification path only: the database is asked anyway
            await asyncio.sleep(min(left, PROGRESS_EVERY))
            found = []
        for _, entries in found:
            last = entries[-1][0]


def _result(run: Run, base: str) -> types.CallToolResult:
    """What the caller reads of the run: its result, why it did not succeed, or, not ended
    yet, a pending result naming the run (and the approval waiting for a reviewer)."""
    if run.state == RunState.SUCCEEDED:
        if run.agent_id is None:  # a tool's result (agents.orchestrator._call_answer)
            value = json.loads(run.answer or "null")
            structured = value if isinstance(value, dict) else {"result": value}
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=run.answer)],
                structured_content=structured,
            )
        return _answered(run)
    if run.state in FINAL_STATES:
        text = f"The call did not succeed: run {run.pk} was {run.state}"
        text += f" ({run.error})" if run.error else ""
        return _error(text, code=str(run.state), run=run.pk)
    pending: dict[str, Any] = {
        "status": str(run.state),
        "run": run.pk,
        "run_url": f"{base}/runs/{run.pk}/",
    }
    where = _STATES.get(RunState(run.state), str(run.state))
    text = f"Not done yet: run {run.pk} is {where}."
    reviewed = _review_page(run, base)
    if reviewed:
        pending["review_url"] = reviewed
        text += f" A reviewer decides at {reviewed}."
    text += (
        f" Nothing more is needed from you: call {RESULT_TOOL} with run {run.pk} later for its "
        "outcome (calling this tool again would ask again)."
    )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=pending
    )


def _review_page(run: Run, base: str) -> str:
    from governance.models import ApprovalRequest, ApprovalStatus, Escalation, EscalationStatus

    if run.state == RunState.AWAITING_APPROVAL:
        pending = ApprovalRequest.objects.filter(run_id=run.pk, status=ApprovalStatus.PENDING)
        found = pending.order_by("-pk").values_list("pk", flat=True).first()
        return f"{base}/inbox/approvals/{found}/" if found else ""
    if run.state == RunState.AWAITING_REVIEW:
        held = Escalation.objects.filter(run_id=run.pk, status=EscalationStatus.PENDING)
        found = held.order_by("-pk").values_list("pk", flat=True).first()
        return f"{base}/inbox/answers/{found}/" if found else ""
    return ""


def _answered(run: Run) -> types.CallToolResult:
    """An agent's answer, with the sources it cites."""
    text = run.answer
    if run.citations:
        text += "\n\nSources:\n" + "\n".join(
            f"[{c['n']}] {c.get('title') or 'untitled'}" for c in run.citations
        )
    structured = {
        "answer": run.answer,
        "citations": run.citations,
        "run": run.pk,
        "confidence": None if run.confidence is None else float(run.confidence),
    }
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=structured
    )


def _error(text: str, **details: Any) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"error": text, **details},
        is_error=True,
    )


# The ASGI application --------------------------------------------------------------------------


class MCPApplication:
    """/mcp: the bearer token first (integrations.mcp.auth), then the SDK's session manager,
    started on the first request (daphne has no lifespan events) and kept for the process."""

    def __init__(self) -> None:
        self.server = Server(
            "warden",
            instructions="Warden's governed tools and agents: every call is decided by your "
            "organisation's policy, may wait for a reviewer, and is recorded in the audit trail.",
            on_list_tools=_list_tools,
            on_call_tool=_call_tool,
        )
        self.manager = self._manager()
        self._running: asyncio.Future | None = None
        self._ready = asyncio.Event()

    def _manager(self) -> StreamableHTTPSessionManager:
        return StreamableHTTPSessionManager(
            self.server,
            # Host checks are Django's (ALLOWED_HOSTS, in authenticate); a bearer token, never a
            # cookie, authenticates, so a page on another origin cannot ride on a browser's.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            session_idle_timeout=settings.WARDEN_MCP_SESSION_IDLE_SECONDS,
        )

    async def _start(self) -> StreamableHTTPSessionManager:
        """The session manager's task group, started on the first request (and again after a
        failure: a manager cannot be restarted, so a new one)."""
        if self._running is None or self._running.done():
            manager, ready = self._manager(), asyncio.Event()

            async def keep() -> None:
                async with manager.run():
                    ready.set()
                    await asyncio.Event().wait()  # for as long as the process serves

            self.manager, self._ready = manager, ready
            self._running = asyncio.ensure_future(keep())
        waiting = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({waiting, self._running}, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            waiting.cancel()
            logger.error("the MCP server could not start", exc_info=self._running.exception())
            raise Refused(503, "the MCP server is starting or failed to start; try again")
        return self.manager

    async def __call__(self, scope, receive, send) -> None:
        from django.core.exceptions import DisallowedHost

        try:
            caller = await _database(authenticate)(scope)
        except Refused as refused:
            return await _respond(send, *refused.response(scope))
        except DisallowedHost:
            return await _respond(send, 400, [(b"content-type", b"text/plain")], b"Bad Request")
        try:
            manager = await self._start()
        except Refused as refused:
            return await _respond(send, *refused.response(scope))
        principal = AccessToken(
            token="",
            client_id=caller.credential,
            scopes=["tools:call"],
            subject=str(caller.user.pk),
        )
        scope = {**scope, "user": AuthenticatedUser(principal), "warden.caller": caller}
        headers = dict(scope["headers"])
        session = headers.get(SESSION_HEADER.encode(), b"").decode("latin-1")
        # Each initialize opens a session the process keeps (until idle): a few a minute each.
        opens = scope["method"] == "POST" and not session and _opens_session(headers)
        if opens and not await _database(_may_open)(caller):
            many = Refused(429, "too many MCP sessions opened; try again later", retry_after=60)
            return await _respond(send, *many.response(scope))
        if scope["method"] == "DELETE" and session:  # the client ends its session
            await _database(_closed)(caller, session)
        await manager.handle_request(scope, receive, send)


def _opens_session(headers: dict) -> bool:
    """A handshake-era request without a session: an `initialize` (the 2026-07-28 protocol
    sends its version with every request, and keeps no session)."""
    version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
    return not version or version.startswith("2025-") or version.startswith("2024-")


def _may_open(caller: Caller) -> bool:
    from governance import ratelimits

    return ratelimits.hit("30/minute", "mcp-sessions", caller.credential)


def _closed(caller: Caller, session_id: str) -> None:
    key = _session_key(caller, session_id, "")
    MCPSession.objects.filter(key=key).update(closed_at=timezone.now())


async def _respond(send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_application: MCPApplication | None = None


async def application(scope, receive, send) -> None:
    """The ASGI application config.asgi routes /mcp to (one per process)."""
    global _application
    if _application is None:
        _application = MCPApplication()
    await _application(scope, receive, send)
