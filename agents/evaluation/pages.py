"""Reads for the evaluation pages and the API: one evaluation with its per-case results, and two
evaluations of one set side by side, case by case. A fixed number of queries each, whatever
the number of cases.

A case's answer (and its tool calls' arguments, and what the runner noted) is what its run made
of what it read, as the person who started the evaluation: another owner who may not read a
knowledge base that run drew on sees HIDDEN in its place (agents.selectors.unreadable_sources,
the trace's rule)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agents.models import EvaluationCase, EvaluationResult, EvaluationRun, EvaluationState
from agents.selectors import HIDDEN, unreadable_sources

SCORES = ("overall", "correctness", "citations", "tools", "behaviour")
FINISHED = (EvaluationState.SUCCEEDED, EvaluationState.FAILED)


def score_of(scores: dict | None, name: str) -> float | None:
    value = (scores or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


@dataclass
class Line:
    """One case's result on the report: its scores by name, what the run did, its notes."""

    result: EvaluationResult
    scores: list[tuple[str, float | None]]
    outcome: str
    notes: list[str]
    answer: str
    tool_calls: list[dict]


NOTES = ("refused", "error", "held_answer")  # what the runner noted of a case, if anything


def _line(result: EvaluationResult, hidden: set[int]) -> Line:
    found = result.scores or {}
    notes = [f"{name.replace('_', ' ')}: {found[name]}" for name in NOTES if found.get(name)]
    shown = [(name, score_of(found, name)) for name in SCORES]
    outcome = str(found.get("outcome", ""))
    if result.run_id in hidden:
        calls = [{**c, "arguments": HIDDEN} for c in result.tool_calls if isinstance(c, dict)]
        return Line(result, shown, outcome, [HIDDEN] if notes else [], HIDDEN, calls)
    return Line(result, shown, outcome, notes, result.answer, list(result.tool_calls or []))


def hidden_runs(viewer, results) -> set[int]:
    """The runs of `results` whose answers `viewer` may not read (the module docstring)."""
    ids = {r.run_id for r in results if r is not None and r.run_id is not None}
    return unreadable_sources(viewer, ids)[0] if ids else set()


def answer_seen(result: EvaluationResult | None, hidden: set[int]) -> str:
    if result is None:
        return ""
    return HIDDEN if result.run_id in hidden else result.answer


@dataclass
class Report:
    """An evaluation as its page shows it."""

    evaluation: EvaluationRun
    results: list[EvaluationResult]
    total: int  # cases in the set now (the evaluation puts each through once)
    hidden: set[int]  # runs whose answers the viewer may not read

    @property
    def lines(self) -> list[Line]:
        return [_line(result, self.hidden) for result in self.results]

    @property
    def done(self) -> int:
        return len(self.results)

    @property
    def finished(self) -> bool:
        return self.evaluation.state in FINISHED

    @property
    def passed_count(self) -> int:
        return sum(1 for r in self.results if r.passed)

    def scores(self) -> list[tuple[str, float | None]]:
        return [(name, score_of(self.evaluation.scores, name)) for name in SCORES]

    def as_dict(self) -> dict[str, Any]:
        evaluation = self.evaluation
        return {
            "id": evaluation.pk,
            "state": evaluation.state,
            "done": self.done,
            "total": self.total,
            "passed": evaluation.passed,
        }


def evaluation_report(evaluation: EvaluationRun, viewer) -> Report:
    """`evaluation` (with its set, as access_evaluation reads it) and its results, each with
    its case, as `viewer` may see them."""
    results = list(
        EvaluationResult.objects.filter(evaluation=evaluation)
        .select_related("case")
        .order_by("case_id")
    )
    total = EvaluationCase.objects.filter(set_id=evaluation.set_id).count()
    return Report(evaluation, results, max(total, len(results)), hidden_runs(viewer, results))


@dataclass
class Difference:
    """One case of two evaluations as the side-by-side page and the API show it."""

    case_id: int
    question: str
    change: str  # agents.evaluation.selectors.CaseComparison.change
    a: EvaluationResult | None
    b: EvaluationResult | None
    scores: list[tuple[str, float | None, float | None, float | None]]
    a_answer: str
    b_answer: str

    @property
    def broke(self) -> bool:
        return self.change == "broken"


@dataclass
class SideBySide:
    a: EvaluationRun
    b: EvaluationRun
    rows: list[Difference]
    totals: list[tuple[str, float | None, float | None, float | None]]

    def counts(self) -> dict[str, int]:
        found = dict.fromkeys(CHANGES, 0)
        for row in self.rows:
            found[row.change] = found.get(row.change, 0) + 1
        return found


CHANGES = ("broken", "fixed", "worse", "better", "new", "gone", "same")


def _scores(a: dict | None, b: dict | None):
    return [_delta(name, a, b) for name in SCORES]


def _delta(name: str, a: dict | None, b: dict | None):
    before, after = score_of(a, name), score_of(b, name)
    change = None if before is None or after is None else round(after - before, 4)
    return name, before, after, change


def side_by_side(a: EvaluationRun, b: EvaluationRun, viewer) -> SideBySide:
    """Two evaluations of one set (agents.evaluation.selectors.evaluation_compare: `a` before,
    `b` after), changed cases first: broken, fixed, worse, better, then the rest, each in the
    set's order, as `viewer` may see them. NotComparable when they are of two sets."""
    from agents.evaluation.selectors import evaluation_compare

    compared = evaluation_compare(a, b)
    hidden = hidden_runs(viewer, [r for c in compared.cases for r in (c.before, c.after)])
    rows = [
        Difference(
            c.case_id,
            c.question,
            c.change,
            c.before,
            c.after,
            _scores(c.before.scores if c.before else None, c.after.scores if c.after else None),
            answer_seen(c.before, hidden),
            answer_seen(c.after, hidden),
        )
        for c in compared.cases
    ]
    order = {change: n for n, change in enumerate(CHANGES)}
    rows.sort(key=lambda d: (order.get(d.change, len(order)), d.case_id))
    return SideBySide(a, b, rows, _scores(a.scores, b.scores))
