"""A second MCP client, from another ecosystem: the official TypeScript SDK's client (Node.js,
installed from the npm registry at the version tests/mcp_ts/package-lock.json pins) lists and
calls Warden's tools over streamable HTTP with a personal access token, in its own session,
which ends when the client says so."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import uuid
from pathlib import Path

from agents.models import Run, RunKind, RunState
from integrations.models import MCPSession
from integrations.tests.conftest import expose
from integrations.tokens import token_create
from tools.models import DemoTicket

CLIENT = Path(__file__).resolve().parents[2] / "tests" / "mcp_ts"


def _installed() -> Path:
    """The client's node_modules, installed once (`npm ci`, under a lock: xdist workers)."""
    npm = shutil.which("npm")
    assert npm is not None, "Node.js and npm are needed (Debian's nodejs and npm packages)"
    with open(CLIENT / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (CLIENT / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True, timeout=600
            )
    return CLIENT / "client.mjs"


def _node(url: str, token: str, *call: str) -> dict:
    script = _installed()
    done = subprocess.run(
        ["node", str(script), f"{url}/mcp", token, *call],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_typescript_sdk_client_lists_and_calls_in_a_session_it_ends(
    mcp_live, start_worker, people
):
    expose("get_ticket_status", holders=[people.member])
    expose("send_email", holders=[people.outsider])
    existing = DemoTicket.objects.create(title="Monitor flicker", idempotency_key=uuid.uuid4().hex)
    _, secret = token_create(user=people.member, name="ts", scopes=["tools:call"], days=1)
    start_worker()

    got = _node(mcp_live.url, secret, "get_ticket_status", json.dumps({"ticket": existing.pk}))

    assert "error" not in got, got
    assert got["tools"] == ["get_ticket_status", "warden_run_result"]
    result = got["result"]
    assert not result.get("isError"), result
    assert result["structuredContent"]["title"] == "Monitor flicker"
    run = Run.objects.get(kind=RunKind.MCP, tool__name="get_ticket_status")
    assert run.state == RunState.SUCCEEDED
    assert run.client == "warden-ts-test 1.0.0"
    session = MCPSession.objects.get(user=people.member)
    assert got["session"]  # a handshake-era client, with a session of its own
    assert session.key.startswith("session:")
    assert session.client == "warden-ts-test 1.0.0"
    assert session.closed_at is not None  # the client ended it (DELETE)

    refused = _node(mcp_live.url, secret, "send_email", json.dumps({"to": "x@example.com"}))
    assert "Unknown tool: send_email" in json.dumps(refused), refused
    assert not Run.objects.filter(tool__name="send_email").exists()


def test_the_typescript_client_without_the_scope_is_refused(mcp_live, people):
    expose("get_ticket_status", holders=[people.member])
    _, secret = token_create(user=people.member, name="ts", scopes=["runs:read"], days=1)

    got = _node(mcp_live.url, secret)

    assert "403" in got["error"]["message"] or got["error"]["code"] == 403, got
    assert "tools" not in got
