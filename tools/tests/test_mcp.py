"""MCP servers: the real `mcp-server-time` from PyPI and a server built with the SDK, over stdio
and streamable HTTP; sync, calls, a killed server restarted, timeouts, SSRF."""

import os
import signal
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from audit.services import SYSTEM
from tools.mcp_servers import MCPUnavailable, mcp_server_sync
from tools.models import MCPServer, SecretKind, Tool, ToolInvocation
from tools.registry import ToolContext
from tools.secrets import secret_set
from tools.services import tool_invoke
from tools.tests.mcp_server import serve_http

pytestmark = pytest.mark.django_db

SCRIPT = str(Path(__file__).with_name("mcp_server.py"))
TOKEN = "mcp-token-9d2e-never-shown"


@pytest.fixture
def user():
    return get_user_model().objects.create_user("mia")


def stdio_server(name: str, *args: str, **environment: str) -> MCPServer:
    server = MCPServer(
        name=name,
        transport="stdio",
        command=sys.executable,
        arguments=list(args),
        environment=environment,
    )
    server.full_clean()
    server.save()
    return server


def enabled(name: str, **fields) -> Tool:
    tool = Tool.objects.get(name=name)
    tool.enabled = True
    for field, value in fields.items():
        setattr(tool, field, value)
    tool.save()
    return tool


def call(tool: Tool, arguments: dict, user, key: str = "run:1:step:0:call:0"):
    return tool_invoke(tool=tool, arguments=arguments, key=key, context=ToolContext(actor=user))


def test_mcp_server_time_from_pypi_is_synced_and_called(user):
    server = stdio_server("time", "-m", "mcp_server_time", "--local-timezone", "UTC")

    report = mcp_server_sync(server=server, actor=SYSTEM)

    assert sorted(report.created) == ["time__convert_time", "time__get_current_time"]
    tool = Tool.objects.get(name="time__get_current_time")
    assert (tool.kind, tool.enabled, tool.config) == ("mcp", False, {"tool": "get_current_time"})
    assert "timezone" in tool.parameters["properties"]
    outcome = call(enabled(tool.name), {"timezone": "Europe/Paris"}, user)
    assert outcome.ok
    assert outcome.result["timezone"] == "Europe/Paris"
    assert outcome.result["datetime"].startswith("20")
    server.refresh_from_db()
    assert server.status.startswith("Synced: 2 tool(s); 2 new")
    assert AuditEvent.objects.filter(action="mcp_server.synced").count() == 1


def test_a_resync_updates_changed_tools_and_disables_vanished_ones(user):
    server = stdio_server("calc", SCRIPT, WARDEN_TEST_TOOLS="add,pid")
    mcp_server_sync(server=server, actor=SYSTEM)
    enabled("calc__add")
    enabled("calc__pid")
    version = Tool.objects.get(name="calc__pid").version

    server.environment = {"WARDEN_TEST_TOOLS": "add,slow"}
    server.save()
    report = mcp_server_sync(server=server, actor=SYSTEM)

    assert (report.created, report.updated, report.disabled) == (["calc__slow"], [], ["calc__pid"])
    tools = dict(Tool.objects.filter(mcp_server=server).values_list("name", "enabled"))
    assert tools == {"calc__add": True, "calc__pid": False, "calc__slow": False}
    assert Tool.objects.get(name="calc__pid").version == version  # kept, not deleted


def test_a_killed_stdio_server_is_restarted_on_the_next_call(user):
    server = stdio_server("proc", SCRIPT)
    mcp_server_sync(server=server, actor=SYSTEM)
    pid = enabled("proc__pid")

    first = call(pid, {}, user, key="k:1").result["result"]
    os.kill(first, signal.SIGKILL)
    second = call(pid, {}, user, key="k:2")

    assert second.ok
    assert second.result["result"] not in (first, None)


def test_an_edited_server_gets_a_new_session_and_the_old_process_ends(user):
    server = stdio_server("edit", SCRIPT)
    mcp_server_sync(server=server, actor=SYSTEM)
    pid = enabled("edit__pid")
    before = call(pid, {}, user, key="k:before").result["result"]

    server.environment = {"WARDEN_TEST_TOOLS": "pid"}
    server.save()
    after = call(pid, {}, user, key="k:after").result["result"]

    assert after != before
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)  # stopped and reaped, not left running


def test_the_idempotency_key_travels_in_the_request_metadata_and_timeouts_are_errors(user):
    server = stdio_server("meta", SCRIPT)
    mcp_server_sync(server=server, actor=SYSTEM)

    echoed = call(enabled("meta__echo_meta"), {}, user, key="run:9:step:3:call:1")
    late = call(enabled("meta__slow", timeout=1), {"seconds": 5}, user, key="k:late")

    assert echoed.result == {"idempotency_key": "run:9:step:3:call:1"}
    assert late.result["error"] == {
        "type": "timeout",
        "message": "meta did not answer within 1 s",
    }


def test_a_streamable_http_server_with_a_bearer_secret(user):
    http, url = serve_http(TOKEN)
    try:
        secret = secret_set(name="mcp-token", kind=SecretKind.BEARER, value=TOKEN, actor=None)
        wrong = secret_set(name="wrong", kind=SecretKind.BEARER, value="nope", actor=None)
        server = MCPServer.objects.create(
            name="remote",
            transport="http",
            url=url,
            auth_secret=secret,
            allow_networks=["127.0.0.1/32"],
        )
        refused = MCPServer.objects.create(
            name="refused",
            transport="http",
            url=url,
            auth_secret=wrong,
            allow_networks=["127.0.0.1/32"],
        )
        private = MCPServer.objects.create(
            name="private", transport="http", url=url, auth_secret=secret
        )

        mcp_server_sync(server=server, actor=SYSTEM)
        outcome = call(enabled("remote__add"), {"a": 2, "b": 40}, user)
        with pytest.raises(MCPUnavailable) as unauthorised:
            mcp_server_sync(server=refused, actor=SYSTEM)
        with pytest.raises(MCPUnavailable) as blocked:
            mcp_server_sync(server=private, actor=SYSTEM)
    finally:
        http.should_exit = True

    assert outcome.result == {"result": 42}
    assert "could not be reached" in str(unauthorised.value)
    stored = [
        "".join(MCPServer.objects.values_list("status", flat=True)),
        "".join(AuditEvent.objects.values_list("data", flat=True)),
        str(list(ToolInvocation.objects.values_list("arguments", "result", "error"))),
    ]
    assert not [place for place in stored if TOKEN in place]
    assert "private or reserved network (127.0.0.1)" in str(blocked.value)
    assert not Tool.objects.filter(mcp_server__name__in=["refused", "private"]).exists()
    refused.refresh_from_db()
    assert refused.status.startswith("Sync failed: ")


def test_a_missing_command_is_a_clear_sync_failure():
    server = MCPServer.objects.create(name="gone", transport="stdio", command="/nonexistent/mcp")

    with pytest.raises(MCPUnavailable) as failed:
        mcp_server_sync(server=server, actor=SYSTEM)

    assert str(failed.value) == "the command '/nonexistent/mcp' of MCP server gone was not found"


def test_an_error_the_server_reports_is_a_structured_tool_error(user):
    server = stdio_server("clock", "-m", "mcp_server_time", "--local-timezone", "UTC")
    mcp_server_sync(server=server, actor=SYSTEM)

    outcome = call(enabled("clock__get_current_time"), {"timezone": "Mars/Olympus"}, user)

    assert outcome.result["error"]["type"] == "tool_error"
    assert "Mars/Olympus" in outcome.result["error"]["message"]


def test_the_admin_syncs_a_server_with_its_button_and_shows_the_status(client):
    admin = get_user_model().objects.create_user("ada", is_staff=True, is_superuser=True)
    client.force_login(admin)
    server = stdio_server("adm", SCRIPT, WARDEN_TEST_TOOLS="add")
    broken = MCPServer.objects.create(name="broken", transport="stdio", command="/nope/mcp")

    synced = client.post(f"/admin/tools/mcpserver/{server.pk}/sync/", follow=True)
    failed = client.post(f"/admin/tools/mcpserver/{broken.pk}/sync/", follow=True)
    listing = client.get("/admin/tools/mcpserver/").content.decode()

    assert "Adm: 1 new (disabled until enabled), 0 updated" in synced.content.decode()
    assert "Sync tools" in synced.content.decode()  # the button on the server's page
    assert "the command &#x27;/nope/mcp&#x27; of MCP server broken was not found" in (
        failed.content.decode()
    )
    assert "Synced: 1 tool(s)" in listing
    assert "Sync failed: the command" in listing
    assert Tool.objects.filter(name="adm__add", enabled=False).exists()
