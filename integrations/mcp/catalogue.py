"""What an MCP caller may call: the tools and the agents exposed over MCP (off by default per
object: `Tool.mcp_exposed`, `Agent.mcp_exposed`) that the caller's account may use (the same
`restrict` as the chat), enabled, and, for an OAuth2 application with an MCP allowlist, listed
there. One function decides it for the listing and for the call alike, so a tool that is not
listed is refused by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.calls import ASK_PREFIX, ASK_SCHEMA, ask_description
from agents.models import Agent
from governance.models import Action
from integrations.models import MCPClientAccess
from tools.models import Tool

RESULT_TOOL = "warden_run_result"  # the outcome of a call that was still pending


@dataclass(frozen=True)
class Caller:
    """Who calls: the token's account, and the credential (an OAuth2 application's token or a
    personal access token) that binds a session to it."""

    user: Any
    application_id: int | None = None
    personal_token_id: int | None = None

    @property
    def credential(self) -> str:
        if self.application_id is not None:
            return f"app:{self.application_id}:{self.user.pk}"
        return f"pat:{self.personal_token_id}"


@dataclass(frozen=True)
class Entry:
    """One tool as the caller sees it: a registered tool, an agent to ask, or the results tool."""

    name: str
    description: str
    input_schema: dict
    tool: Tool | None = None
    agent: Agent | None = None

    @property
    def read_only(self) -> bool:
        return self.tool is not None and self.tool.risk == "read"

    @property
    def destructive(self) -> bool:
        return self.tool is not None and self.tool.risk == "critical"


RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "run": {"type": "integer", "minimum": 1, "description": "the run a pending result named"}
    },
    "required": ["run"],
    "additionalProperties": False,
}

RESULT_ENTRY = Entry(
    RESULT_TOOL,
    "The outcome of one of your calls that was still pending (waiting for a reviewer, or "
    "longer than the wait): its result once done, else where it stands.",
    RESULT_SCHEMA,
)


def exposed_tools(caller: Caller):
    tools = Tool.objects.filter(enabled=True, mcp_exposed=True).restrict(caller.user, Action.USE)
    allowlist = _allowlist(caller)
    if allowlist is not None:
        tools = tools.filter(pk__in=allowlist.tools.values("pk"))
    return tools.order_by("name")


def exposed_agents(caller: Caller):
    agents = Agent.objects.filter(enabled=True, mcp_exposed=True).restrict(caller.user, Action.USE)
    allowlist = _allowlist(caller)
    if allowlist is not None:
        agents = agents.filter(pk__in=allowlist.agents.values("pk"))
    return agents.order_by("slug")


def _allowlist(caller: Caller) -> MCPClientAccess | None:
    if caller.application_id is None:
        return None
    return MCPClientAccess.objects.filter(application_id=caller.application_id).first()


def catalogue(caller: Caller) -> list[Entry]:
    """Every tool the caller may call, by name (a registered tool's name wins over an agent's
    ask_ name, were the two the same)."""
    entries: dict[str, Entry] = {}
    for tool in exposed_tools(caller):
        entries[tool.name] = Entry(tool.name, tool.description, tool.parameters, tool=tool)
    for agent in exposed_agents(caller):
        name = f"{ASK_PREFIX}{agent.slug}"
        entries.setdefault(name, Entry(name, ask_description(agent), ASK_SCHEMA, agent=agent))
    entries.setdefault(RESULT_TOOL, RESULT_ENTRY)
    return list(entries.values())


def entry(caller: Caller, name: str) -> Entry | None:
    """The tool called `name`, if the caller may call it (what `catalogue` would list)."""
    tool = exposed_tools(caller).filter(name=name).first()
    if tool is not None:
        return Entry(tool.name, tool.description, tool.parameters, tool=tool)
    if name.startswith(ASK_PREFIX):
        agent = exposed_agents(caller).filter(slug=name.removeprefix(ASK_PREFIX)).first()
        if agent is not None:
            return Entry(name, agent.description, ASK_SCHEMA, agent=agent)
    return RESULT_ENTRY if name == RESULT_TOOL else None
