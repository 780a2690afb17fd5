"""Reads for the evaluation pages and the API: one evaluation with its per-case results, and two
evaluations of one set side by side, case by case. A fixed number of queries each, whatever
the number of cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agents.models import EvaluationCase, EvaluationResult, EvaluationRun, EvaluationState

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
class Report:
    """An evaluation as its page shows it."""

    evaluation: EvaluationRun
    results: list[EvaluationResult]
    total: int  # cases in the set now (the evaluation puts each through once)

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


def evaluation_report(evaluation: EvaluationRun) -> Report:
    """`evaluation` (with its set, as access_evaluation reads it) and its results, each with
    its case: two queries."""
    results = list(
        EvaluationResult.objects.filter(evaluation=evaluation)
        .select_related("case")
        .order_by("case_id")
    )
    total = EvaluationCase.objects.filter(set_id=evaluation.set_id).count()
    return Report(evaluation, results, max(total, len(results)))


@dataclass
class Difference:
    """One case in two evaluations: each one's result (None when it has none)."""

    case: EvaluationCase
    a: EvaluationResult | None
    b: EvaluationResult | None
    deltas: list[tuple[str, float | None, float | None, float | None]] = field(default_factory=list)

    @property
    def change(self) -> str:
        """`fixed`, `broken`, `same`, or `missing` when one of the two has no result."""
        if self.a is None or self.b is None:
            return "missing"
        if self.a.passed == self.b.passed:
            return "same"
        return "fixed" if self.b.passed else "broken"


@dataclass
class Comparison:
    a: EvaluationRun
    b: EvaluationRun
    rows: list[Difference]

    def counts(self) -> dict[str, int]:
        found = {"fixed": 0, "broken": 0, "same": 0, "missing": 0}
        for row in self.rows:
            found[row.change] += 1
        return found

    def totals(self) -> list[tuple[str, float | None, float | None, float | None]]:
        return [_delta(name, self.a.scores, self.b.scores) for name in SCORES]


def _delta(name: str, a: dict | None, b: dict | None):
    before, after = score_of(a, name), score_of(b, name)
    change = None if before is None or after is None else round(after - before, 4)
    return name, before, after, change


def evaluations_compared(a: EvaluationRun, b: EvaluationRun) -> Comparison:
    """Two evaluations of one set, case by case (the set's cases now and any either evaluation
    answered), changes first: broken, then fixed, then missing, then the same. Two queries."""
    results = (
        EvaluationResult.objects.filter(evaluation_id__in=[a.pk, b.pk])
        .select_related("case")
        .order_by("case_id")
    )
    by_case: dict[int, dict[str, Any]] = {}
    for result in results:
        row = by_case.setdefault(result.case_id, {"case": result.case})
        row["a" if result.evaluation_id == a.pk else "b"] = result
    rows = []
    for row in by_case.values():
        first, second = row.get("a"), row.get("b")
        deltas = [
            _delta(name, first.scores if first else None, second.scores if second else None)
            for name in SCORES
        ]
        rows.append(Difference(row["case"], first, second, deltas))
    order = {"broken": 0, "fixed": 1, "missing": 2, "same": 3}
    rows.sort(key=lambda d: (order[d.change], d.case.pk))
    return Comparison(a, b, rows)
