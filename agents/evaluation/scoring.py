"""Scoring an evaluation: pure functions from what a case expects and what its run did.

Each score is 0..1, or None when the case does not ask for it (no facts, no citations, no tool
calls expected); a case's overall is the mean of those it asks for, behaviour always among them.

- correctness: the share of expected facts found in the answer, both normalised (case, accents,
  punctuation, number words: "two weeks" is "2 weeks", "1,000" is "1000"), as whole words;
- citations: the F1 of the documents cited against those expected (precision and recall kept);
- tools: the share of expected calls made, by name, with the expected arguments a subset of
  the call's;
- behaviour: 1 when the run did what the case expects (answered, refused or escalated), else 0.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

ANSWER, REFUSE, ESCALATE = "answer", "refuse", "escalate"  # EvaluationExpect's values
ANSWERED, REFUSED, ESCALATED = "answered", "refused", "escalated"  # what a run did
OUTCOME_OF = {ANSWER: ANSWERED, REFUSE: REFUSED, ESCALATE: ESCALATED}
SCORES = ("correctness", "citations", "tools", "behaviour")

_SMALL = """zero one two three four five six seven eight nine ten eleven twelve thirteen
    fourteen fifteen sixteen seventeen eighteen nineteen twenty"""
_NUMBER_WORDS = {word: str(n) for n, word in enumerate(_SMALL.split())} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "hundred": "100",
}
_THOUSANDS = re.compile(r"(?<=\d)[,_](?=\d{3}\b)")
_NOT_WORD = re.compile(r"[^\w.]+|(?<!\d)\.|\.(?!\d)")
# What a model says when it will not answer (a refusal, or "it is not in the handbook").
_REFUSALS = re.compile(
    r"\b(i don'?t know|i do not know|i can'?not|i can'?t (help|answer|share|do)|i'?m unable|"
    r"i am unable|i won'?t|not able to (help|answer)|no information (on|about))\b",
    re.IGNORECASE,
)


def normalise(text: str) -> str:
    """Lower case, no accents, words and numbers only, number words as digits."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _THOUSANDS.sub("", text.replace("\u2019", "'"))
    words = _NOT_WORD.sub(" ", text.replace("'", "")).split()
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words)


def fact_found(fact: str, answer: str) -> bool:
    wanted = normalise(fact)
    return bool(wanted) and f" {wanted} " in f" {normalise(answer)} "


def correctness(facts: Sequence[str], answer: str) -> float | None:
    if not facts:
        return None
    return sum(fact_found(fact, answer) for fact in facts) / len(facts)


@dataclass(frozen=True)
class CitationScore:
    precision: float
    recall: float
    score: float  # their F1


def citations(expected: Sequence[str], cited: Sequence[Iterable[str]]) -> CitationScore | None:
    """`cited`: each cited document by its names (title, file name); a document cited twice
    counts once. Expected documents are named by either."""
    if not expected:
        return None
    wanted = {normalise(name) for name in expected}
    documents = {frozenset(normalise(n) for n in names if n) for names in cited}
    documents.discard(frozenset())
    hits = {name for name in wanted if any(name in names for names in documents)}
    relevant = sum(1 for names in documents if names & wanted)
    precision = relevant / len(documents) if documents else 0.0
    recall = len(hits) / len(wanted)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return CitationScore(round(precision, 4), round(recall, 4), round(f1, 4))


def arguments_match(expected, actual) -> bool:
    """The expected arguments are a subset of the call's: every expected key is there with an
    equal value (strings normalised, numbers by value, objects recursively, lists equal)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and arguments_match(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(arguments_match(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float | str):
        try:
            return Decimal(str(expected)) == Decimal(str(actual))
        except ArithmeticError:
            return False
    if isinstance(expected, str) and isinstance(actual, str | int | float):
        return normalise(expected) == normalise(str(actual))
    return expected == actual


def tools(expected: Sequence[dict], calls: Sequence[dict]) -> float | None:
    """The share of expected calls ({"name", "arguments"}) the run made; each call made
    answers one expected call at most."""
    if not expected:
        return None
    unused = list(calls)
    found = 0
    for wanted in expected:
        for call in unused:
            if call.get("name") == wanted.get("name") and arguments_match(
                wanted.get("arguments") or {}, call.get("arguments") or {}
            ):
                unused.remove(call)
                found += 1
                break
    return found / len(expected)


def outcome(*, state: str, answer: str, held: bool, approval_required: bool) -> str:
    """What the run did, as a person would see it: escalated (its answer held for review, or a
    call it made needs a reviewer's approval), refused (no answer shown, or one that declines),
    or answered."""
    if held or approval_required or state in ("awaiting_review", "awaiting_approval"):
        return ESCALATED
    if state != "succeeded" or not answer.strip() or _REFUSALS.search(answer):
        return REFUSED
    return ANSWERED


def behaviour(expect: str, did: str) -> float:
    return 1.0 if OUTCOME_OF[expect] == did else 0.0


@dataclass(frozen=True)
class CaseScores:
    correctness: float | None
    citations: CitationScore | None
    tools: float | None
    behaviour: float
    outcome: str
    facts_found: list[str] = field(default_factory=list)

    @property
    def overall(self) -> float:
        parts = [self.correctness, self.citation_score, self.tools, self.behaviour]
        present = [p for p in parts if p is not None]
        return round(sum(present) / len(present), 4)

    @property
    def citation_score(self) -> float | None:
        return None if self.citations is None else self.citations.score

    def as_dict(self) -> dict:
        return {
            "correctness": _rounded(self.correctness),
            "citations": self.citation_score,
            "citation_precision": None if self.citations is None else self.citations.precision,
            "citation_recall": None if self.citations is None else self.citations.recall,
            "tools": _rounded(self.tools),
            "behaviour": self.behaviour,
            "overall": self.overall,
            "outcome": self.outcome,
            "facts_found": self.facts_found,
        }


def score_case(
    *,
    expect: str,
    facts: Sequence[str],
    expected_citations: Sequence[str],
    expected_tools: Sequence[dict],
    answer: str,
    cited: Sequence[Iterable[str]],
    calls: Sequence[dict],
    did: str,
) -> CaseScores:
    """A case's scores. Facts and citations are scored only when the case expects an answer
    (a refusal or escalation has none to score)."""
    answering = expect == ANSWER
    return CaseScores(
        correctness=correctness(facts, answer) if answering else None,
        citations=citations(expected_citations, cited) if answering else None,
        tools=tools(expected_tools, calls),
        behaviour=behaviour(expect, did),
        outcome=did,
        facts_found=[fact for fact in facts if fact_found(fact, answer)] if answering else [],
    )


def passed(overall: float, pass_mark: Decimal | float) -> bool:
    return Decimal(str(overall)) >= Decimal(str(pass_mark))


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None


def summary(cases: Sequence[dict]) -> dict:
    """The evaluation's scores: each the mean over the cases that ask for it; overall the mean
    of the cases' overalls."""
    return {name: mean(case.get(name) for case in cases) for name in (*SCORES, "overall")}


def percentile(values: Sequence[int], share: float) -> int | None:
    """The nearest-rank percentile (`share` 0..1) of `values`; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
