"""Python tools: functions registered in code with a decorator. Admins choose which ones an
agent offers; nobody writes code in the admin. (The full tool registry, with HTTP and MCP tools
and their admin, is tools' own issue; this is the part the runtime needs now.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ToolRisk:
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class PythonTool:
    name: str
    description: str
    parameters: dict  # JSON Schema (Draft 2020-12) of the arguments
    risk: str
    function: Callable[..., Any]

    @property
    def has_side_effects(self) -> bool:
        return self.risk != ToolRisk.READ

    def as_openai_tool(self) -> dict:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


PYTHON_TOOLS: dict[str, PythonTool] = {}


def python_tool(*, name: str, description: str, parameters: dict, risk: str = ToolRisk.READ):
    """Register `function(arguments: dict, *, idempotency_key: str) -> JSON` as a tool."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in PYTHON_TOOLS:
            raise ValueError(f"a Python tool named {name!r} is already registered")
        PYTHON_TOOLS[name] = PythonTool(name, description, parameters, risk, function)
        return function

    return register


def tool_get(name: str) -> PythonTool | None:
    return PYTHON_TOOLS.get(name)
