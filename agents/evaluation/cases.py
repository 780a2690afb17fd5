"""Evaluation cases as people edit them, and made from feedback.

- In the console a case's lists are edited as lines (`lines_of` / `facts_from`,
  `tools_from`): one fact or cited document a line; a tool call a line, its name then,
  optionally, the JSON object its arguments must include. `case_problems` says what is wrong
  with a case (a tool no tool is named, facts on a case that should refuse...).
- `evaluation_case_from_feedback`: a real question someone rated becomes a case of a set of
  that agent's, its `source_run` the rated run. A thumbs-up prefills the expected facts (and
  cited documents) from the answer, for the owner to edit; a thumbs-down leaves the
  expectation to the owner and keeps the comment in `notes`. The question, facts and comment
  are copied as the console shows them: personal data in them as the audit trail keeps it, a
  keyed hash (audit.pii), never in clear. Written (checked and audited, as
  `evaluation_case.added` with its source run) by agents.evaluation.services.evaluation_case_add.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.db import transaction

from agents.evaluation.owners import access_evaluation_set
from agents.evaluation.services import EvaluationError, evaluation_case_add
from agents.models import Agent, EvaluationCase, EvaluationExpect, EvaluationSet, Feedback, Rating
from agents.selectors import unreadable_sources
from audit.pii import as_seen_by
from governance.access import NoAccess
from tools.models import Tool
from tools.schemas import unstorable_at

FACTS_PREFILLED = 3  # sentences of a liked answer offered as its facts
FACT_LENGTH = 300
LINES_MOST = 50
_MARKER = re.compile(r"\s*\[\d+\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class CaseRefused(Exception):
    """The case cannot be made as asked: `str()` says why, in words for the console."""


def lines_of(text: str) -> list[str]:
    """The non-blank lines of `text`, trimmed, each once, in order."""
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def lines_text(items: list[Any]) -> str:
    return "\n".join(str(item) for item in items)


def tools_text(calls: list[dict]) -> str:
    """Expected tool calls as lines: `name` or `name {"argument": "value"}`."""
    shown = []
    for call in calls:
        arguments = call.get("arguments") or {}
        name = str(call.get("name", ""))
        shown.append(f"{name} {json.dumps(arguments, ensure_ascii=False)}" if arguments else name)
    return "\n".join(shown)


def tools_from(text: str) -> tuple[list[dict], list[str]]:
    """The expected tool calls in `text` (lines as `tools_text` writes them) and what is wrong
    with them, in words."""
    calls: list[dict] = []
    problems: list[str] = []
    for number, line in enumerate(lines_of(text), start=1):
        name, _, rest = line.partition(" ")
        arguments: object = {}
        if rest.strip():
            try:
                arguments = json.loads(rest)
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                problems.append(
                    f"Line {number}: after the tool's name, its arguments as a JSON object, "
                    'such as {"title": "VPN down"}.'
                )
                continue
        calls.append({"name": name, "arguments": arguments})
    return calls, problems


def known_tool_names(names: set[str]) -> set[str]:
    """Those of `names` that name a tool, or an agent asked as one (`ask_<slug>`)."""
    found = set(Tool.objects.filter(name__in=names).values_list("name", flat=True))
    asked = {n.removeprefix("ask_") for n in names if n.startswith("ask_")}
    slugs = Agent.objects.filter(slug__in=asked).values_list("slug", flat=True)
    found |= {f"ask_{slug}" for slug in slugs}
    return found


def case_problems(
    *, question: str, expect: str, facts: list[str], citations: list[str], tools: list[dict]
) -> dict[str, list[str]]:
    """What is wrong with a case, by field (empty when nothing is)."""
    problems: dict[str, list[str]] = {}

    def say(field: str, message: str) -> None:
        problems.setdefault(field, []).append(message)

    if not question.strip():
        say("question", "A case needs a question.")
    if expect not in EvaluationExpect.values:
        say("expect", "Answers, refuses or escalates.")
    for field, items in (("expected_facts", facts), ("expected_citations", citations)):
        if len(items) > LINES_MOST:
            say(field, f"At most {LINES_MOST} lines.")
        if any(len(item) > FACT_LENGTH for item in items):
            say(field, f"A line is at most {FACT_LENGTH} characters.")
    if len(tools) > LINES_MOST:
        say("expected_tools", f"At most {LINES_MOST} lines.")
    for field, value in (
        ("question", question),
        ("expected_facts", facts),
        ("expected_citations", citations),
        ("expected_tools", tools),
    ):
        if found := unstorable_at(value):
            say(field, f"Not kept: {found[0] if found[0] != 'body' else 'the text'} {found[1]}.")
    names = {str(call["name"]) for call in tools}
    if unknown := sorted(names - known_tool_names(names)):
        say("expected_tools", "No tool is named " + ", ".join(unknown) + ".")
    if expect != EvaluationExpect.ANSWER and (facts or citations or tools):
        say(
            "expect",
            "A case that should refuse or escalate expects no facts, citations or tool calls: "
            "leave those empty, or expect an answer.",
        )
    return problems


def _facts_of(answer: str) -> list[str]:
    text = _MARKER.sub("", answer).strip()
    sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    return [s[:FACT_LENGTH] for s in sentences[:FACTS_PREFILLED]]


def _shown(value: Any) -> Any:
    """As the console shows what is in a run (governance.admin.personal_field)."""
    return as_seen_by(value, viewer_id=None, owner_id=None)


def evaluation_case_from_feedback(
    *, feedback: Feedback, evaluation_set: EvaluationSet, actor: Any
) -> EvaluationCase:
    """A case of `evaluation_set` made from the rated run's question (see the module docstring).
    NoAccess when the actor may not evaluate the set's agent; CaseRefused when the run is not
    that agent's, is a case of the set already, or makes no case. Nothing is written then."""
    evaluation_set = access_evaluation_set(actor, evaluation_set.pk)
    run = feedback.run
    if run.agent_id != evaluation_set.agent_id:
        raise CaseRefused(f"The run was not answered by {evaluation_set.agent}, the set's agent.")
    liked = feedback.rating == Rating.UP
    # The answer drew on a knowledge base the actor may not read: none of it goes into the case
    # (agents.selectors.unreadable_sources, as every surface that shows a run).
    hidden = run.pk in unreadable_sources(actor, [run.pk])[0]
    if liked and hidden:
        facts, citations = [], []
        notes = (
            f"From a thumbs-up on run {run.pk}, whose answer drew on a knowledge base you may "
            "not read: set what a good answer holds."
        )
    elif liked:
        facts = _shown(_facts_of(run.answer))
        titles = [c.get("title", "") for c in run.citations or [] if isinstance(c, dict)]
        citations = [t for t in dict.fromkeys(titles) if isinstance(t, str) and t]
        notes = f"From a thumbs-up on run {run.pk}: check the facts, taken from its answer."
    else:
        facts, citations = [], []
        comment = _shown(feedback.comment)
        notes = f"From a thumbs-down on run {run.pk}: set what a good answer holds."
        if comment:
            notes += f"\nTheir comment: {comment}"
    data = {
        "question": _shown(run.input),
        "expected_facts": facts,
        "expected_citations": citations,
        "expect": EvaluationExpect.ANSWER,
        "notes": notes,
    }
    with transaction.atomic():
        # One case per run in a set, whoever asks at the same time.
        EvaluationSet.objects.select_for_update().filter(pk=evaluation_set.pk).first()
        if EvaluationCase.objects.filter(set=evaluation_set, source_run=run).exists():
            raise CaseRefused(f"Run {run.pk} is a case of “{evaluation_set}” already.")
        try:
            case = evaluation_case_add(
                evaluation_set=evaluation_set, data=data, actor=actor, source_run=run
            )
        except EvaluationError as refused:
            raise CaseRefused(f"Run {run.pk} cannot be a case: {refused}.") from None
    return case


__all__ = [
    "CaseRefused",
    "NoAccess",
    "case_problems",
    "evaluation_case_from_feedback",
    "lines_of",
    "lines_text",
    "tools_from",
    "tools_text",
]
