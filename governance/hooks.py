"""Where governance calls up into the apps above it without importing them (DESIGN.md §2).

The apps above fill these in from their AppConfig.ready: agents resumes a parked run when its
approval or escalation is decided, tools checks edited arguments against a tool's schema. Each
hook runs inside the transaction of the decision, so a decision and its effect on the run
commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (approval request) -> None: the decided request's run continues (or ends, if rejected).
approval_decided: list[Callable[[Any], None]] = []
# (escalation) -> None: the held answer is delivered, edited, or replaced by the rejection.
escalation_decided: list[Callable[[Any], None]] = []
# (tool id, arguments) -> a readable problem, or None when the arguments fit the schema.
argument_problem: list[Callable[[int, dict], str | None]] = []
# Names of Group's reverse relations to the objects that name approver groups (an agent's, a
# tool's): a member of such a group reviews, and has an inbox, before any request names it.
approver_relations: set[str] = set()


def check_arguments(tool_id: int, arguments: dict) -> str | None:
    if not argument_problem:
        raise RuntimeError("no argument checker registered (is the tools app installed?)")
    return argument_problem[0](tool_id, arguments)
