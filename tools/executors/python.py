"""`python` tools: a function registered in code with `@python_tool`; the row names it and may
carry settings the function reads from its context (a database alias, a sender address)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tools.executors import Call, ToolError
from tools.registry import PYTHON_FUNCTIONS

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "function": {"type": "string", "description": "the registered function's name"},
        "settings": {"type": "object", "description": "read by the function"},
    },
    "required": ["function"],
    "additionalProperties": False,
}


def config_problem(config: dict[str, Any], parameters: dict[str, Any]) -> str | None:
    if config["function"] not in PYTHON_FUNCTIONS:
        known = ", ".join(sorted(PYTHON_FUNCTIONS))
        return f"no Python function {config['function']!r} is registered (known: {known})"
    return None


def execute(call: Call) -> Any:
    function = PYTHON_FUNCTIONS.get(call.tool.config["function"])
    if function is None:
        raise ToolError("unavailable", "this tool's function is not installed on this server")
    context = dataclasses.replace(
        call.context, settings=call.tool.config.get("settings", {}), timeout=call.tool.timeout
    )
    return function(call.arguments, idempotency_key=call.idempotency_key, context=context)
