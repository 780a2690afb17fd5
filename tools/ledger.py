"""The invocation ledger's SQL (DESIGN.md §4): every statement that writes `ToolInvocation`
rows, or reads a tool's live settings for a call, is here and nowhere else.

Most of them run on their own (tools.services). `LedgerShare` lets a caller's statement carry
the ledger's part instead: a run's checkpoint does, so that committing a step stays one round
trip. The read-only Python calls the step made leave their rows with the share, and the
checkpoint writes them, only if its own guard (the fenced UPDATE of the run) matched; the next
call's tool settings come back with the same statement, so that call need not read them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from tools.models import Tool, ToolKind

# What a call reads again before it runs: an admin's change (disabling the tool, a new
# configuration) applies to the next call, also in runs that started before it.
LIVE_FIELDS = [
    *("enabled", "config", "parameters", "version"),
    *("timeout", "result_limit", "rate_limit"),
]

# The tool's live fields and the id of the key's finished ledger row, if any: one prepared
# statement, for every call.
LIVE = f"""
SELECT {", ".join(LIVE_FIELDS)},
    (SELECT id FROM tools_toolinvocation WHERE key = %s AND status <> 'started')
FROM tools_tool WHERE id = %s
"""  # noqa: S608 - column names are constants


def _insert_finished(*, rows: str, at: str, after: str = "") -> str:
    """Finished rows (tools.services._ledger_row's shape) from the jsonb array parameter
    `rows`, stamped `at`; none when another worker recorded the key first. `after`, a
    relation of the caller's statement: the rows are written only if it has a row."""
    source = f"{after}, " if after else ""
    return f"""
INSERT INTO tools_toolinvocation (key, tool, tool_version, actor_id, arguments, status, result,
    error, latency_ms, fence, attempts, created_at, finished_at)
SELECT l.key, l.tool, l.tool_version, l.actor_id, l.arguments, l.status, l.result, l.error,
    l.latency_ms, l.fence, l.attempts, {at}, {at}
FROM {source}jsonb_to_recordset(%({rows})s::jsonb) AS l(key text, tool text,
    tool_version text, actor_id bigint, arguments jsonb, status text, result jsonb,
    error text, latency_ms double precision, fence bigint, attempts integer)
ON CONFLICT (key) DO NOTHING
"""  # noqa: S608 - names are constants


# The ledger row of a Python call, in the call's transaction: one statement, and no row when
# another worker recorded the key first (then this attempt rolls back: the unique key fences
# the effect, which commits with the row or not at all).
RECORD = _insert_finished(rows="rows", at="now()") + "RETURNING id"

# An HTTP, MCP or external call's row, committed as `started` before the call: a new row, or a
# `started` one left by an attempt that died (the same worker's, or one whose lease expired),
# counted again. A row claimed under a newer lease, or finished, is not touched.
CLAIM = """
INSERT INTO tools_toolinvocation AS l (key, tool, tool_version, actor_id, arguments, status,
    error, fence, attempts, created_at)
VALUES (%(key)s, %(tool)s, %(tool_version)s, %(actor_id)s, %(arguments)s::jsonb, 'started', '',
    %(fence)s, 1, now())
ON CONFLICT (key) DO UPDATE SET fence = EXCLUDED.fence, attempts = l.attempts + 1
WHERE l.status = 'started' AND (l.fence IS NULL OR l.fence <= EXCLUDED.fence)
RETURNING id
"""

# The call's outcome: completes the row this worker claimed (or writes it, for a call that never
# claimed one: refused by the rate limit, or a Python call rolled back). Nothing when the row
# finished already or was claimed since under a newer lease: a stale worker changes nothing.
FINISH = """
INSERT INTO tools_toolinvocation AS l (key, tool, tool_version, actor_id, arguments, status,
    result, error, latency_ms, fence, attempts, created_at, finished_at)
VALUES (%(key)s, %(tool)s, %(tool_version)s, %(actor_id)s, %(arguments)s::jsonb, %(status)s,
    %(result)s::jsonb, %(error)s, %(latency_ms)s, %(fence)s, %(attempts)s, now(), now())
ON CONFLICT (key) DO UPDATE SET status = EXCLUDED.status, result = EXCLUDED.result,
    error = EXCLUDED.error, latency_ms = EXCLUDED.latency_ms, finished_at = EXCLUDED.finished_at,
    tool_version = EXCLUDED.tool_version
WHERE l.status = 'started' AND (l.fence IS NULL OR l.fence <= EXCLUDED.fence)
RETURNING id
"""


class LedgerShare:
    """The ledger's share of a caller's statement, one per worker's hold on a run.

    The statement is built once: `LedgerShare.cte(after=...)` is a data-modifying CTE writing
    the rows handed over, `LedgerShare.column()` a column of the next tool's live settings.
    Each execution takes `params(at=...)` (which hands the rows over: a statement that fails loses
    them, and the call that made them runs again) and gives the column's value to `took`.
    `tools.services.tool_invoke(share=...)` reads the settings and leaves rows here."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._next: int | None = None  # the tool whose settings the next statement reads
        self._live: tuple[int, dict[str, Any]] | None = None

    @staticmethod
    def cte(*, after: str) -> str:
        return _insert_finished(rows="ledger_rows", at="%(ledger_at)s", after=after)

    @staticmethod
    def column() -> str:
        fields = ", ".join(f"'{field}', {field}" for field in LIVE_FIELDS)
        return f"(SELECT jsonb_build_object({fields}) FROM tools_tool WHERE id = %(ledger_tool)s::bigint)"  # noqa: E501, S608 - constants only

    def expect(self, tool: Tool | None) -> None:
        """`tool` is called next: a Python tool's settings come back with the next statement
        (HTTP and MCP calls read them with the ledger lookup they need anyway)."""
        self._next = tool.pk if tool is not None and tool.kind == ToolKind.PYTHON else None

    def params(self, *, at: datetime) -> dict[str, Any]:
        """The statement's parameters; `at` stamps the rows (the caller's time of commit)."""
        rows, self._rows = self._rows, []
        self._live = None
        return {
            "ledger_rows": json.dumps(rows, cls=DjangoJSONEncoder),
            "ledger_tool": self._next,
            "ledger_at": at,
        }

    def took(self, value: Any) -> None:
        """The value of `column()` in the statement's row."""
        if value is not None and self._next is not None:
            self._live = (self._next, value if isinstance(value, dict) else json.loads(value))

    def live(self, tool: Tool) -> dict[str, Any] | None:
        """`tool`'s LIVE_FIELDS as the last statement read them, if it read them."""
        if self._live is None or self._live[0] != tool.pk or tool.kind != ToolKind.PYTHON:
            return None
        return self._live[1]

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
