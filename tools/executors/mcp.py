"""`mcp` tools: a tool of an MCP server, synced into a `Tool` row (tools/mcp_servers.py) and
called through the process's pooled session to that server, with the tool's timeout and the
call's idempotency key in the request metadata (`_meta.idempotency_key`)."""

from __future__ import annotations

import json
from typing import Any, cast

from tools.executors import Call, ToolError

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {"tool": {"type": "string", "minLength": 1, "description": "its name there"}},
    "required": ["tool"],
    "additionalProperties": False,
}


def config_problem(config: dict[str, Any], parameters: dict[str, Any]) -> str | None:
    return None


def execute(call: Call) -> Any:
    from mcp.shared.exceptions import MCPError
    from mcp_types import REQUEST_TIMEOUT

    from tools.mcp_servers import MCPUnavailable, ServerSpec, session_pool
    from tools.models import MCPServer

    server_id = cast(int, call.tool.mcp_server_id)  # set on every MCP tool (Tool.clean)
    server = MCPServer.objects.get(pk=server_id)  # as configured now
    try:
        result = session_pool().call_tool(
            ServerSpec.of(server),
            call.tool.config["tool"],
            call.arguments,
            # RequestParamsMeta is open (PEP 728 extra_items), which mypy does not read yet.
            meta={"idempotency_key": call.idempotency_key},  # type: ignore[typeddict-unknown-key]
            timeout=float(call.tool.timeout),
            writes=call.tool.has_side_effects,
        )
    except MCPUnavailable as error:
        raise ToolError("unavailable", str(error)) from None
    except MCPError as error:
        if error.code == REQUEST_TIMEOUT:
            raise ToolError(
                "timeout", f"{server.name} did not answer within {call.tool.timeout} s"
            ) from None
        raise ToolError("tool_error", f"{server.name}: {error.message}"[:500]) from None
    text = "\n".join(getattr(part, "text", "") for part in result.content if part.type == "text")
    if result.is_error:
        raise ToolError("tool_error", text[:1000] or f"{server.name} reported an error")
    if result.structured_content is not None:
        return result.structured_content
    others = [part.type for part in result.content if part.type != "text"]
    if others:  # images, audio, resources: named, not passed on (the model reads text)
        text += f"\n[{', '.join(others)} content omitted]"
    try:
        return json.loads(text)
    except ValueError:
        return text
