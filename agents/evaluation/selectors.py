"""Reading evaluations: whether a version passed (a release's gate), two evaluations compared."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import OuterRef, Subquery

from agents.models import (
    AgentVersion,
    EvaluationResult,
    EvaluationRun,
    EvaluationSet,
    EvaluationState,
)

SCORES = ("correctness", "citations", "tools", "behaviour", "overall")


def version_evaluation_passed(version: AgentVersion) -> bool:
    """Whether `version` passed its agent's evaluations: on each of the agent's sets, the
    newest finished evaluation of this version passed. False when the agent has no set, or a
    set has no finished evaluation of it. One query."""
    newest = EvaluationRun.objects.filter(
        set=OuterRef("pk"), version=version, state=EvaluationState.SUCCEEDED
    ).order_by("-finished_at", "-pk")
    verdicts = list(
        EvaluationSet.objects.filter(agent_id=version.agent_id)
        .annotate(passed=Subquery(newest.values("passed")[:1]))
        .values_list("passed", flat=True)
    )
    return bool(verdicts) and all(verdict is True for verdict in verdicts)


class NotComparable(ValueError):
    """Two evaluations of different sets: their cases are not the same."""


@dataclass(frozen=True)
class CaseComparison:
    """One case in two evaluations: each one's result (None: it has none), and what changed."""

    case_id: int
    question: str
    expect: str
    before: EvaluationResult | None
    after: EvaluationResult | None
    deltas: dict[str, float | None] = field(default_factory=dict)  # after minus before, by score

    @property
    def change(self) -> str:
        """fixed (failed, now passes), broken (passed, now fails), better, worse, same, or
        new / gone when one evaluation has no result for the case."""
        if self.before is None or self.after is None:
            return "new" if self.before is None else "gone"
        if self.before.passed != self.after.passed:
            return "fixed" if self.after.passed else "broken"
        overall = self.deltas.get("overall") or 0
        return "better" if overall > 0 else "worse" if overall < 0 else "same"

    @property
    def answer_changed(self) -> bool:
        return (
            self.before is not None
            and self.after is not None
            and self.before.answer != self.after.answer
        )


@dataclass(frozen=True)
class Comparison:
    before: EvaluationRun
    after: EvaluationRun
    cases: list[CaseComparison]
    deltas: dict[str, float | None]  # the evaluations' scores, after minus before

    def changed(self) -> list[CaseComparison]:
        return [c for c in self.cases if c.change != "same" or c.answer_changed]


def evaluation_compare(a: EvaluationRun, b: EvaluationRun) -> Comparison:
    """Two evaluations of one set (`a` before, `b` after: say, two versions), case by case:
    each case's results side by side and the change in each score. NotComparable when they
    are of different sets. One query."""
    if a.set_id != b.set_id:
        raise NotComparable("the two evaluations are of different sets")
    results = EvaluationResult.objects.filter(evaluation__in=[a.pk, b.pk]).select_related("case")
    by_case: dict[int, dict[int, EvaluationResult]] = {}
    cases = {}
    for result in results:
        by_case.setdefault(result.case_id, {})[result.evaluation_id] = result
        cases[result.case_id] = result.case
    compared = []
    for case_id in sorted(by_case):
        before, after = by_case[case_id].get(a.pk), by_case[case_id].get(b.pk)
        case = cases[case_id]
        compared.append(
            CaseComparison(
                case_id=case_id,
                question=case.question,
                expect=case.expect,
                before=before,
                after=after,
                deltas=_deltas(before.scores if before else None, after.scores if after else None),
            )
        )
    return Comparison(before=a, after=b, cases=compared, deltas=_deltas(a.scores, b.scores))


def _deltas(before: dict | None, after: dict | None) -> dict[str, float | None]:
    deltas: dict[str, float | None] = {}
    for name in SCORES:
        old = (before or {}).get(name)
        new = (after or {}).get(name)
        deltas[name] = None if old is None or new is None else round(new - old, 4)
    return deltas
