"""Agent runs through the tool registry: an HTTP tool with a secret and an MCP server's tool
called end to end, and the agent offering only its enabled tools."""

import json
import logging
import sys
import uuid

import pytest
from django.contrib.auth import get_user_model

from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunState, RunStep
from agents.orchestrator import run_execute
from agents.provenance import unmark
from agents.services import run_start
from audit.models import AuditEvent
from audit.services import SYSTEM
from tests.access import grant_agent
from tests.model_server import Reply
from tools.mcp_servers import mcp_server_sync
from tools.models import DemoTicket, MCPServer, Tool, ToolInvocation
from tools.secrets import secret_set
from tools.tests import mcp_server as test_mcp_server
from tools.tests.endpoint import Answer

pytestmark = pytest.mark.django_db

TOKEN = "crm-token-c0ffee-never-shown"
MCP_SCRIPT = test_mcp_server.__file__  # run as a stdio server


@pytest.fixture
def agent(server):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    return Agent.objects.create(name="Sales", slug=f"s-{uuid.uuid4().hex[:6]}", route=route)


def execute(agent, text) -> Run:
    user = get_user_model().objects.create_user(f"u{uuid.uuid4().hex[:6]}")
    grant_agent(user, agent)
    conversation = Conversation.objects.create(owner=user, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=user, input=text, stream=False)
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def test_an_http_tool_with_a_secret_runs_end_to_end_and_the_secret_goes_nowhere_else(
    server, agent, crm, caplog
):
    secret_set(name="crm", value=TOKEN, actor=None)
    crm.answer("/accounts/acme", Answer(body={"account": {"name": "Acme", "owner": "Dana"}}))
    tool = Tool.objects.create(
        name="crm_account",
        description="Look up a CRM account.",
        kind="http",
        parameters={
            "type": "object",
            "properties": {"account": {"type": "string"}},
            "required": ["account"],
        },
        config={
            "method": "GET",
            "url": crm.url("/accounts/{account}"),
            "auth": {"secret": "crm", "scheme": "bearer"},
            "select": "/account",
            "allow_networks": ["127.0.0.1/32"],
        },
        enabled=True,
    )
    agent.tools.set([tool])
    server.script(
        "primary",
        Reply.call("crm_account", {"account": "acme"}),
        Reply.say("Acme's account owner is Dana."),
    )

    with caplog.at_level(logging.DEBUG):
        run = execute(agent, "who owns the Acme account?")

    assert run.state == RunState.SUCCEEDED
    assert run.answer == "Acme's account owner is Dana."
    (request,) = crm.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    step = RunStep.objects.get(run=run, kind="tool")
    assert step.output["result"] == {"name": "Acme", "owner": "Dana"}
    assert request.headers["idempotency-key"] == step.input["key"]
    invocation = ToolInvocation.objects.get(key=step.input["key"])
    assert (invocation.status, invocation.tool_version) == ("succeeded", tool.version)
    event = json.loads(AuditEvent.objects.get(run=str(run.pk), action="tool.invoked").data)
    assert event["version"] == tool.version
    assert event["status"] == "succeeded"
    assert event["latency_ms"] > 0
    # The secret reached the CRM and nothing else.
    tool_message = server.requests["primary"][1]["messages"][-1]
    assert json.loads(unmark(tool_message["content"])) == {"name": "Acme", "owner": "Dana"}
    everywhere = [
        caplog.text,
        json.dumps(server.requests),
        json.dumps(list(ToolInvocation.objects.values("arguments", "result", "error"))),
        "".join(AuditEvent.objects.values_list("data", flat=True)),
        json.dumps(list(RunStep.objects.values("input", "output"))),
    ]
    assert caplog.text  # the run did log at DEBUG
    assert not [place for place in everywhere if TOKEN in place]


def test_only_enabled_tools_are_offered_and_others_cannot_be_called(server, agent):
    Tool.objects.filter(name="get_ticket_status").update(enabled=True)
    agent.tools.set(Tool.objects.filter(name__in=["get_ticket_status", "create_ticket"]))
    assert not Tool.objects.get(name="create_ticket").enabled
    server.script(
        "primary",
        Reply.call("create_ticket", {"title": "printer on fire"}),
        Reply.say("I cannot open tickets."),
    )

    run = execute(agent, "open a ticket")

    names = [t["function"]["name"] for t in server.requests["primary"][0]["tools"]]
    assert names == ["get_ticket_status"]
    step = RunStep.objects.get(run=run, kind="tool")
    assert step.output["error"] == "there is no tool named 'create_ticket' here"
    assert not DemoTicket.objects.exists()
    assert not ToolInvocation.objects.exists()


def test_an_agent_run_calls_an_mcp_tool(server, agent):
    mcp = MCPServer.objects.create(
        name="calc", transport="stdio", command=sys.executable, arguments=[MCP_SCRIPT]
    )
    mcp_server_sync(server=mcp, actor=SYSTEM)
    Tool.objects.filter(name="calc__add").update(enabled=True)
    agent.tools.set(Tool.objects.filter(mcp_server=mcp))  # calc__echo_meta etc. stay disabled
    server.script(
        "primary",
        Reply.call("calc__add", {"a": 19, "b": 23}),
        Reply.say("19 + 23 = 42."),
    )

    run = execute(agent, "what is 19 + 23?")

    assert run.state == RunState.SUCCEEDED
    assert [t["function"]["name"] for t in server.requests["primary"][0]["tools"]] == ["calc__add"]
    step = RunStep.objects.get(run=run, kind="tool")
    assert step.output["result"] == {"result": 42}
    to_model = server.requests["primary"][1]["messages"][-1]["content"]
    assert json.loads(unmark(to_model)) == {"result": 42}  # as data (agents.provenance)
    ledger = ToolInvocation.objects.get(key=step.input["key"])
    assert (ledger.tool, ledger.status) == ("calc__add", "succeeded")
