"""Prompt-injection detection for user input, retrieved passages and tool outputs.

A weighted set of signals, each a pattern for one thing injected text does: tells the model to
drop its instructions, gives it a new identity, asks for its prompt or secrets, fakes a chat
role marker, tells it to keep something from the user, or (in data that should only inform)
addresses the assistant and orders a tool call or a transfer. A text scores the sum of its
signals' weights; at `THRESHOLD` or more it is an injection. A signal found only inside a
quotation (a policy quoting the phrase it warns about) counts a third.

Measured on the labelled sets in tests/governance/test_guardrails.py (figures in the README).
It is a heuristic: paraphrases it has no pattern for pass, and it says so in its verdict.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from governance.policy import Verdict, VerdictAction

THRESHOLD = 0.9

_OBJECT = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|"
    r"constraints|programming|system message|safety (?:rules|guidelines|filters))"
)
_SIGNALS: list[tuple[str, float, re.Pattern]] = [
    (
        "override",
        1.0,
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass|abandon|drop)\b[^.\n]{0,40}?"
            r"\b(?:previous|prior|above|earlier|preceding|initial|original|system|existing|all|"
            r"any|your|these|those|the)\b[^.\n]{0,20}?" + _OBJECT,
            re.I,
        ),
    ),
    (
        "new_instructions",
        0.9,
        re.compile(
            r"\b(?:new|updated|revised|real|actual|secret)\s+(?:instructions?|directives?|orders)"
            r"\s*(?::|follow|are|for the (?:ai|assistant|model))",
            re.I,
        ),
    ),
    (
        "identity",
        0.9,
        re.compile(
            r"\byou are (?:now|no longer)\b[^.\n]{0,30}\b(?:dan|unrestricted|unfiltered|jailbroken|"
            r"evil|free|without (?:rules|restrictions|limits)|an? (?:different|new) "
            r"(?:ai|assistant|model))|\b(?:developer|god|jailbreak|dan) mode\b|"
            r"\bact as (?:an? )?(?:unrestricted|unfiltered|jailbroken|evil)\b|"
            r"\bpretend (?:to be|you are)\b[^.\n]{0,40}\b(?:no|without) (?:rules|restrictions|"
            r"limits|filters)",
            re.I,
        ),
    ),
    (
        "exfiltration",
        0.9,
        re.compile(
            r"\b(?:reveal|print|show|repeat|output|leak|disclose|display|give me|tell me|what "
            r"(?:is|are|was|were))\b[^.\n]{0,30}(?:\b(?:your|the)\s+(?:full |exact |hidden |"
            r"initial |original )?(?:system prompt|instructions you (?:were|have been) given|"
            r"hidden instructions|api keys?|secret keys?|credentials|passwords?)|\byour\s+"
            r"(?:full |exact |hidden |initial |original )?prompt\b|\bthe prompt above\b)",
            re.I,
        ),
    ),
    (
        "role_marker",
        0.9,
        re.compile(
            r"<\|im_start\|>|<\|(?:system|assistant)\|>|\[/?INST\]|<</?SYS>>|</?system>|"
            r"^\s*#{2,}\s*(?:system|instruction)s?\b|^\s*(?:system|assistant)\s*:\s*\S",
            re.I | re.M,
        ),
    ),
    (
        "secrecy",
        0.7,
        re.compile(
            r"\b(?:do not|don't|never|without)\s+(?:tell(?:ing)?|inform(?:ing)?|mention(?:ing)?|"
            r"alert(?:ing)?|notify(?:ing)?)\s+(?:the )?(?:user|human|customer|anyone|them)\b",
            re.I,
        ),
    ),
    (
        "command",
        0.6,
        re.compile(
            r"\b(?:ai|assistant|llm|chatbot|agent)\s*[:,]\s*(?:please\s+)?(?:ignore|forward|"
            r"delete|send|call|use|run|transfer|export|reply|respond|print|reveal)\b",
            re.I,
        ),
    ),
    (
        "addressed",
        0.5,
        re.compile(
            r"\b(?:ai|assistant|language model|llm|chatbot|ai agent)s?\b[^.\n]{0,30}\b(?:must|"
            r"should|shall|needs? to|is (?:instructed|required|ordered) to|will now)\b",
            re.I,
        ),
    ),
    (
        "action",
        0.5,
        re.compile(
            r"\b(?:call|invoke|use|run|execute|trigger)\s+(?:the\s+)?`?\w+_\w+`?\s*(?:tool|"
            r"function)?\b[^.\n]{0,40}\b(?:with|to|and)\b|\b(?:send|forward|email|transfer|wire|"
            r"export|upload)\b[^.\n]{0,40}\b(?:to|into)\b[^.\n]{0,40}(?:@|https?://|"
            r"\baccount\b|\biban\b)|\b(?:delete|drop|erase|wipe)\s+(?:all|every|the)\s+"
            r"(?:records|tables?|files|users|data)\b",
            re.I,
        ),
    ),
]
_QUOTED = re.compile(r"\"[^\"\n]{3,300}\"|“[^”\n]{3,300}”|'[^'\n]{3,300}'|«[^»\n]{3,300}»")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


@dataclass(frozen=True)
class Finding:
    score: float
    signals: tuple[str, ...]

    @property
    def injection(self) -> bool:
        return self.score >= THRESHOLD


def scan(text: str) -> Finding:
    """Score `text` (normalised: NFKC, invisible characters removed, whitespace folded). A
    JSON document (a tool's output) is scored by its strings, each on its own: the quotes
    around them are its syntax, not quotation."""
    try:
        document = json.loads(text)
    except (TypeError, ValueError):
        return _scan(text)
    leaves = list(_strings(document))
    if not leaves:
        return Finding(0.0, ())
    # Each string alone, and all of them together: an order split across fields still adds up.
    findings = [_scan(leaf) for leaf in leaves]
    if len(leaves) > 1:
        findings.append(_scan("\n".join(leaves)))
    return max(findings, key=lambda finding: finding.score)


def _strings(value) -> Iterator[str]:
    """The strings of a JSON document, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _scan(text: str) -> Finding:
    normal = unicodedata.normalize("NFKC", text or "").translate(_INVISIBLE)
    normal = re.sub(r"[ \t]+", " ", normal)
    quoted = [m.span() for m in _QUOTED.finditer(normal)]
    score, found = 0.0, []
    for name, weight, pattern in _SIGNALS:
        spans = [m.span() for m in pattern.finditer(normal)]
        if not spans:
            continue
        outside = any(not _inside(span, quoted) for span in spans)
        score += weight if outside else weight / 3
        found.append(name if outside else f"{name} (quoted)")
    return Finding(round(score, 2), tuple(found))


def _inside(span: tuple[int, int], quoted: list[tuple[int, int]]) -> bool:
    return any(start <= span[0] and span[1] <= end for start, end in quoted)


def injection_verdict(text: str, *, action: str, where: str) -> Verdict:
    """The verdict for `text` found `where` (input, passage, tool_output), with the agent's
    `action` (block, approve or flag) when it is an injection, else a pass."""
    finding = scan(text)
    if not finding.injection:
        return Verdict("injection", VerdictAction.PASS)
    detail = f"{where}: {', '.join(finding.signals)} (score {finding.score})"
    return Verdict("injection", VerdictAction(action), detail)
