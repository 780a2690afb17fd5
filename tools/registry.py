"""Python tools: functions registered in code with a decorator. Admins choose which ones an
agent offers; nobody writes code in the admin. (The full tool registry, with HTTP and MCP tools
and their admin, is tools' own issue; this is the part the runtime needs now.)"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema


@dataclass(frozen=True)
class ToolContext:
    """Who the tool acts for, handed to tools that declare a `context` parameter."""

    actor: Any  # the user the run acts for
    agent: Any
    run_id: int


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
    validator: jsonschema.Draft202012Validator = field(init=False, repr=False, compare=False)
    takes_context: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        jsonschema.Draft202012Validator.check_schema(self.parameters)  # once, at registration
        object.__setattr__(self, "validator", jsonschema.Draft202012Validator(self.parameters))
        wants = "context" in inspect.signature(self.function).parameters
        object.__setattr__(self, "takes_context", wants)

    def call(self, arguments: dict, *, idempotency_key: str, context: ToolContext) -> Any:
        if self.takes_context:
            return self.function(arguments, idempotency_key=idempotency_key, context=context)
        return self.function(arguments, idempotency_key=idempotency_key)

    def argument_error(self, arguments: Any) -> jsonschema.ValidationError | None:
        """The most relevant way `arguments` break the tool's schema, or None."""
        return jsonschema.exceptions.best_match(self.validator.iter_errors(arguments))

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
    """Register `function(arguments: dict, *, idempotency_key: str) -> JSON` as a tool; a
    function that also takes `context` receives a ToolContext (who the run acts for)."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in PYTHON_TOOLS:
            raise ValueError(f"a Python tool named {name!r} is already registered")
        PYTHON_TOOLS[name] = PythonTool(name, description, parameters, risk, function)
        return function

    return register


def tool_get(name: str) -> PythonTool | None:
    return PYTHON_TOOLS.get(name)
