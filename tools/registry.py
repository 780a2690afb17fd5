"""Python tools: functions registered in code with a decorator. `python_tools_sync` (run after
every migrate) gives each one a `Tool` row; admins enable, configure and assign those rows, and
nobody writes code in the admin. The code stays the source of the function's contract: a sync
refreshes the row's description and parameters, never what an admin chose (enabled, risk tier
after the first sync, limits, settings)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tools.schemas import parameters_problem


@dataclass(frozen=True)
class ToolContext:
    """Who a tool acts for, and the settings of the `Tool` row being called, handed to
    functions that declare a `context` parameter."""

    actor: Any  # the user the run acts for
    agent: Any = None
    run_id: int | None = None
    fence: int | None = None  # the run's lease token: the ledger's writes are fenced by it
    settings: dict[str, Any] = field(default_factory=dict)  # the Tool row's config["settings"]
    timeout: float = 30.0  # seconds: the function's own I/O should give up by then


@dataclass(frozen=True)
class PythonFunction:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema (Draft 2020-12) of the arguments
    risk: str
    function: Callable[..., Any]
    external: bool = False  # its effect leaves the database (see tools.services._external)
    takes_context: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if problem := parameters_problem(self.parameters):  # once, at import
            raise ValueError(f"Python tool {self.name!r}: {problem}")
        wants = "context" in inspect.signature(self.function).parameters
        object.__setattr__(self, "takes_context", wants)

    def __call__(
        self, arguments: dict[str, Any], *, idempotency_key: str, context: ToolContext
    ) -> Any:
        if self.takes_context:
            return self.function(arguments, idempotency_key=idempotency_key, context=context)
        return self.function(arguments, idempotency_key=idempotency_key)


PYTHON_FUNCTIONS: dict[str, PythonFunction] = {}

F = TypeVar("F", bound=Callable[..., Any])


def python_tool(
    *,
    name: str,
    description: str,
    parameters: dict[str, Any],
    risk: str = "read",
    external: bool = False,
) -> Callable[[F], F]:
    """Register `function(arguments: dict, *, idempotency_key: str) -> JSON` as a tool; a
    function that also takes `context` receives a ToolContext. `risk` is a RiskTier value;
    `external` marks a function whose effect happens outside the database (it then cannot
    commit together with its ledger row)."""

    def register(function: F) -> F:
        if name in PYTHON_FUNCTIONS:
            raise ValueError(f"a Python tool named {name!r} is already registered")
        PYTHON_FUNCTIONS[name] = PythonFunction(
            name, description, parameters, risk, function, external
        )
        return function

    return register


def python_tools_sync(**_signal: object) -> None:
    """Give every registered function a `Tool` row (new ones disabled), and refresh the
    contract of existing ones from the code. Connected to post_migrate."""
    from tools.models import Tool, ToolKind

    rows = {t.config.get("function"): t for t in Tool.objects.filter(kind=ToolKind.PYTHON)}
    for name, function in PYTHON_FUNCTIONS.items():
        tool = rows.get(name)
        if tool is None:
            if Tool.objects.filter(name=name).exists():
                continue  # the name is taken by another kind of tool: leave both alone
            tool = Tool(
                name=name, kind=ToolKind.PYTHON, config={"function": name}, risk=function.risk
            )
        contract = (function.description, function.parameters)
        if tool.pk and (tool.description, tool.parameters) == contract:
            continue
        tool.description, tool.parameters = contract
        if tool.pk is None:
            tool.save()
        else:
            tool.save(update_fields=["description", "parameters", "updated_at"])
