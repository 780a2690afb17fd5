"""Warden as an MCP server, as MCP clients meet it: the official `mcp` Python client over
streamable HTTP (both protocol eras) against daphne, with a real worker executing the calls.
Each caller lists only what they may call; a read is executed, audited and ledgered; a write
waits for a reviewer and the client gets a pending result naming the approval, then the result
once approved; a denied tool is refused by name; a token without the scope gets nothing."""

from __future__ import annotations

import json
import uuid

import anyio
import httpx
import httpx2
import pytest
from django.test import Client as DjangoClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agents.models import Conversation, Run, RunKind, RunState
from audit.models import AuditEvent
from governance.approvals import approval_decide
from governance.models import ApprovalRequest
from integrations.models import MCPSession
from integrations.tests.conftest import expose
from integrations.tokens import token_create
from tools.models import DemoTicket, Tool, ToolInvocation


def _session(url: str, token: str, **options):
    """An MCP client session on /mcp with the bearer token (a context manager)."""

    class Session:
        async def __aenter__(self):
            self.http = httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60)
            )
            await self.http.__aenter__()
            transport = streamable_http_client(f"{url}/mcp", http_client=self.http)
            self.client = Client(transport, **options)
            return await self.client.__aenter__()

        async def __aexit__(self, *exc):
            try:
                await self.client.__aexit__(*exc)
            finally:
                await self.http.__aexit__(*exc)

    return Session()


def test_a_client_lists_only_its_tools_reads_at_once_and_waits_for_a_reviewer_to_write(
    mcp_live, start_worker, people
):
    status = expose("get_ticket_status", holders=[people.member])
    ticket = expose("create_ticket", holders=[people.member])  # risk: write
    expose("send_email", holders=[people.outsider])  # exposed, not the member's
    expose("schedule_meeting", exposed=False, holders=[people.member])  # the member's, not exposed
    existing = DemoTicket.objects.create(title="Printer jam", idempotency_key=uuid.uuid4().hex)
    _, secret = token_create(user=people.member, name="laptop", scopes=["tools:call"], days=1)
    start_worker()
    title = f"VPN down {uuid.uuid4().hex[:6]}"
    progress: list[tuple[float, str | None]] = []

    async def on_progress(done, total, message):
        progress.append((done, message))

    async def session() -> dict:
        seen: dict = {}
        async with _session(mcp_live.url, secret) as client:
            listed = await client.list_tools()
            seen["names"] = sorted(t.name for t in listed.tools)
            seen["read"] = await client.call_tool("get_ticket_status", {"ticket": existing.pk})
            seen["write"] = await client.call_tool(
                "create_ticket", {"title": title}, progress_callback=on_progress
            )
            with pytest.raises(MCPError) as refused:
                await client.call_tool("send_email", {"to": "a@example.com"})
            seen["refused"] = refused.value
        return seen

    seen = anyio.run(session)

    assert seen["names"] == ["create_ticket", "get_ticket_status", "warden_run_result"]
    # The read: executed at once, its result structured, a run of kind mcp, audited, ledgered.
    read = seen["read"]
    assert not read.is_error, read
    assert read.structured_content["title"] == "Printer jam"
    run = Run.objects.get(kind=RunKind.MCP, tool=status)
    assert run.state == RunState.SUCCEEDED
    assert run.agent_id is None
    assert run.client.startswith("mcp ")  # the Python SDK's name for itself, and its version
    invoked = json.loads(AuditEvent.objects.get(run=run.pk, action="tool.invoked").data)
    assert invoked["tool"] == "get_ticket_status"
    assert invoked["client"] == run.client
    queued = AuditEvent.objects.get(run=run.pk, action="run.queued")
    assert json.loads(queued.data)["client"] == run.client
    assert queued.actor_id == str(people.member.pk)
    assert ToolInvocation.objects.filter(key__startswith=f"run:{run.pk}:").count() == 1

    # The write: parked for a reviewer; the client heard where it stood, then got a pending
    # result naming the run and the approval's page; nothing was created.
    write = seen["write"]
    assert not write.is_error, write
    pending = write.structured_content
    assert pending["status"] == "awaiting_approval", pending
    approval = ApprovalRequest.objects.get(run_id=pending["run"])
    assert pending["review_url"].endswith(f"/inbox/approvals/{approval.pk}/")
    assert "warden_run_result" in write.content[0].text
    assert any("waiting for a reviewer" in (message or "") for _, message in progress), progress
    assert not DemoTicket.objects.filter(title=title).exists()
    assert approval.agent_id is None
    assert approval.tool_id == ticket.pk

    # Denied: refused by name, as if there were no such tool; no run was made of it.
    assert "Unknown tool: send_email" in str(seen["refused"])
    assert not Run.objects.filter(tool__name="send_email").exists()

    # A run like any: in the reviewer's inbox, on the trace page, in the API.
    browser = DjangoClient()
    browser.force_login(people.reviewer)
    inbox = browser.get("/inbox/").content.decode()
    assert f'href="/inbox/approvals/{approval.pk}/"' in inbox
    assert "MCP client" in inbox
    browser.force_login(people.member)
    trace = browser.get(f"/runs/{pending['run']}/").content.decode()
    assert "create_ticket (MCP)" in trace
    assert "An MCP client&#x27;s call" in trace
    seen = browser.get(f"/api/v1/runs/{pending['run']}").json()
    assert (seen["kind"], seen["tool"], seen["agent"]) == ("mcp", "create_ticket", None)
    assert seen["state"] == "awaiting_approval"

    approval_decide(approval_id=approval.pk, decided_by=people.reviewer, approve=True)

    async def later():
        async with _session(mcp_live.url, secret) as client:
            return await client.call_tool("warden_run_result", {"run": pending["run"]})

    done = anyio.run(later)
    assert not done.is_error, done
    assert done.structured_content["status"] == "open"
    created = DemoTicket.objects.get(title=title)
    assert done.structured_content["ticket"] == created.pk
    assert Run.objects.get(pk=pending["run"]).state == RunState.SUCCEEDED


def test_a_token_without_the_scope_or_no_token_gets_nothing_and_learns_where_to_get_one(
    mcp_live, people
):
    expose("get_ticket_status", holders=[people.member])
    _, narrow = token_create(user=people.member, name="api", scopes=["runs:read"], days=1)
    oauth_narrow = mcp_live.token(people.integration, "agents:run")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}

    anonymous = httpx.post(f"{mcp_live.url}/mcp", json=body, headers=headers)
    assert anonymous.status_code == 401, anonymous.text
    challenge = anonymous.headers["www-authenticate"]
    assert "resource_metadata=" in challenge
    metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
    metadata = httpx.get(metadata_url).json()
    assert metadata["resource"] == f"{mcp_live.url}/mcp"
    server = httpx.get(
        f"{metadata['authorization_servers'][0]}/.well-known/oauth-authorization-server"
    )
    assert server.json()["code_challenge_methods_supported"] == ["S256"]
    assert "tools:call" in server.json()["scopes_supported"]

    for token in (narrow, oauth_narrow):
        refused = httpx.post(
            f"{mcp_live.url}/mcp",
            json=body,
            headers={**headers, "Authorization": f"Bearer {token}"},
        )
        assert refused.status_code == 403, refused.text
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        assert refused.headers["content-type"] == "application/problem+json"

    unknown = httpx.post(
        f"{mcp_live.url}/mcp",
        json=body,
        headers={**headers, "Authorization": "Bearer wdn_pat_not-a-real-one"},
    )
    assert unknown.status_code == 401

    async def with_the_client():
        async with _session(mcp_live.url, narrow) as client:
            await client.list_tools()

    with pytest.RaisesGroup(MCPError, flatten_subgroups=True):  # the SDK reports the 403 so
        anyio.run(with_the_client)
    assert not MCPSession.objects.exists()


def test_a_handshake_era_client_opens_a_session_bound_to_its_token(mcp_live, people):
    """A 2025 client (initialize, Mcp-Session-Id) with an OAuth2 token: served the same tools,
    its session recorded as open; an application's MCP allowlist narrows what it sees."""
    from integrations.models import MCPClientAccess
    from integrations.tests.conftest import application_for

    expose("get_ticket_status", holders=[people.integration])
    expose("create_ticket", holders=[people.integration])
    application = application_for(people.integration, "Desktop")
    token = mcp_live.token(people.integration, "tools:call", application=application)

    async def listed() -> list[str]:
        async with _session(mcp_live.url, token, mode="legacy") as client:
            return sorted(t.name for t in (await client.list_tools()).tools)

    assert anyio.run(listed) == ["create_ticket", "get_ticket_status", "warden_run_result"]
    session = MCPSession.objects.get(application=application)
    assert session.key.startswith("session:")
    assert session.user == people.integration
    assert session.protocol_version.startswith("2025-")

    allowlist = MCPClientAccess.objects.create(application=application)
    allowlist.tools.add(Tool.objects.get(name="get_ticket_status"))
    assert anyio.run(listed) == ["get_ticket_status", "warden_run_result"]


def test_an_agent_exposed_over_mcp_is_asked_as_a_tool_and_answers(mcp_live, start_worker, people):
    """ask_<slug>: a run of the agent (kind mcp, its client named), answered with the agent's
    answer; an agent the caller may use but not exposed is not there."""
    from integrations.tests.test_openai import _agent
    from tests.model_server import Reply

    desk = _agent(mcp_live.model, "desk", holders=[people.member])
    desk.mcp_exposed = True
    desk.save(update_fields=["mcp_exposed"])
    hidden = _agent(mcp_live.model, "hidden", holders=[people.member])  # not exposed
    mcp_live.model.script("desk", Reply.say("The VPN is back since 9:00."))
    _, secret = token_create(user=people.member, name="laptop", scopes=["tools:call"], days=1)
    start_worker()

    async def session():
        async with _session(mcp_live.url, secret) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            answered = await client.call_tool(f"ask_{desk.slug}", {"question": "Is the VPN up?"})
            with pytest.raises(MCPError):
                await client.call_tool(f"ask_{hidden.slug}", {"question": "?"})
            return names, answered

    names, answered = anyio.run(session)

    assert names == [f"ask_{desk.slug}", "warden_run_result"]
    assert not answered.is_error, answered
    assert answered.structured_content["answer"] == "The VPN is back since 9:00."
    run = Run.objects.get(pk=answered.structured_content["run"])
    assert (run.kind, run.agent, run.actor) == (RunKind.MCP, desk, people.member)
    assert run.client.startswith("mcp ")
    assert run.input == "Is the VPN up?"
    assert not Run.objects.filter(agent=hidden).exists()

    # warden_run_result gives the caller's MCP calls, not their chats.
    chat = Conversation.objects.create(owner=people.member, agent=desk)
    chatted = Run.objects.create(agent=desk, conversation=chat, actor=people.member, input="x")

    async def results():
        async with _session(mcp_live.url, secret) as client:
            mine = await client.call_tool("warden_run_result", {"run": run.pk})
            other = await client.call_tool("warden_run_result", {"run": chatted.pk})
            return mine, other

    mine, other = anyio.run(results)
    assert mine.structured_content["answer"] == "The VPN is back since 9:00."
    assert other.is_error
    assert f"you have no run {chatted.pk}" in other.content[0].text
