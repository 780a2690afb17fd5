"""Executors: how a `Tool` of each kind runs. One module per kind, each with

- `CONFIG_SCHEMA`: the JSON Schema of that kind's `Tool.config`, checked on save;
- `config_problem(config, parameters) -> str | None`: what the schema cannot check (say, that
  a URL's placeholders are arguments of the tool);
- `execute(call: Call) -> JSON`: run the call, raising `ToolError` for anything that goes wrong.

`tools.services.tool_invoke` wraps every call (validation, rate limit, ledger, truncation);
executors only run it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tools.registry import ToolContext
from tools.schemas import Validator, instance_problem

if TYPE_CHECKING:
    from tools.models import Tool

MODULES = {
    "python": "tools.executors.python",
    "http": "tools.executors.http",
    "mcp": "tools.executors.mcp",
}


@dataclass(frozen=True)
class Call:
    tool: Tool
    arguments: dict[str, Any]
    idempotency_key: str
    context: ToolContext


class ToolError(Exception):
    """A failed call, as the model (and the ledger) sees it: a kind the model can act on
    (`timeout`, `http_error`, `invalid_response`, ...) and a message for people."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def as_result(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message}}


def executor(kind: str) -> ModuleType:
    return importlib.import_module(MODULES[kind])


def config_problem(kind: str, config: Any, parameters: dict[str, Any]) -> str | None:
    """Why `config` is not a valid configuration for a tool of `kind` taking `parameters`."""
    if kind not in MODULES:
        return f"Tools of kind {kind!r} cannot run here yet."
    module = executor(kind)
    problem = instance_problem(Validator(module.CONFIG_SCHEMA), config, what="configuration")
    if problem is None:
        problem = module.config_problem(config, parameters)
    return problem and problem[0].upper() + problem[1:]
