"""The answer cache (issue 25): a standalone question answered again with the answer the same
agent version gave before to the same question (the exact tier) or to one that means the same
(the similar tier: the nearest question's embedding above WARDEN_ANSWER_CACHE_SIMILARITY).

It never crosses permissions: an entry is filed under the version and a digest of the exact set
of knowledge bases the asker may read and tools and agents the asker may use in that version
(`answer_scope`), never under a user, so two people with the same access share answers and two
whose access differs in anything never do. A hit must also find again, in the run's own
retrieval, every passage the kept answer cites (it is renumbered to this run's passages): an
answer is never served from a passage this asker was not just given.

Kept: answers delivered (not held) by a model step that called no tool, in a run that read no
flagged passage and whose question and answer carry no personal data. Dropped: every entry that
could read a knowledge base when a document of it is added, changed, re-embedded or deleted
(`cached_answers_invalidate`); those of versions that no longer serve (`cached_answers_prune`).
A hit is audited (`cache.hit`: the entry, the similarity, the tokens saved; never the question).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from pgvector.django import CosineDistance

from agents.models import Agent, AnswerCache, CachedAnswer, Run

_MARKER = re.compile(r"\[(\d{1,3})\]")


# Contractions written out, so "what's" and "what is" are one question ("can't" keeps its "not").
_CONTRACTIONS = (
    (re.compile(r"\b(can)'?t\b"), r"\1not"),
    (re.compile(r"\bwon'?t\b"), "will not"),
    (re.compile(r"\b([a-z]+)n't\b"), r"\1 not"),
    (re.compile(r"\b(what|where|when|who|how|it|that|there)'s\b"), r"\1 is"),
    (re.compile(r"\b([a-z]+)'re\b"), r"\1 are"),
    (re.compile(r"\b([a-z]+)'ve\b"), r"\1 have"),
    (re.compile(r"\b([a-z]+)'ll\b"), r"\1 will"),
    (re.compile(r"\bi'm\b"), "i am"),
)
# Punctuation around words (a trailing "?", quotes, commas, brackets): inside a word
# ("non-birth", "3.5", "e-mail") it stays, and so do signs that mean something ("3.5%", "$20").
_MARKS = "?!.,;:\"'\u201c\u201d\u2018\u2019()\\[\\]{}\u2026"
_AROUND = re.compile(rf"(?:(?<=\s)|^)[{_MARKS}]+|[{_MARKS}]+(?=\s|$)")


def normalised(question: str) -> str:
    """The question as the exact tier compares it: case, spacing, punctuation around words and
    contractions do not count ("What's the VPN's address?" is "what is the vpn's address")."""
    text = question.lower().replace("\u2019", "'")
    for pattern, written in _CONTRACTIONS:
        text = pattern.sub(written, text)
    return " ".join(_AROUND.sub(" ", text).split())


def question_hash(question: str) -> str:
    return hashlib.sha256(normalised(question).encode()).hexdigest()


def answer_scope(*, knowledge_bases: list[int], tools: list[int], agents: list[int]) -> str:
    """The digest of what the asker may read and use in the version serving the run: the
    exact sets, sorted (who asks does not count, only what they may reach)."""
    raw = json.dumps(
        {
            "knowledge_bases": sorted(knowledge_bases),
            "tools": sorted(tools),
            "agents": sorted(agents),
        }
    )
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class Found:
    """A kept answer a question may reuse, and how near the question it was kept for is."""

    entry: int
    answer: str
    citations: list[dict]
    confidence: float | None
    tokens: int
    similarity: float
    exact: bool


def cached_answer_find(
    *, version_id: int, scope: str, question: str, mode: str
) -> tuple[Found | None, list[float] | None]:
    """(the kept answer for `question` in this version and scope, or None; the question's
    embedding if it was computed). The exact tier first (one indexed query); then, for the
    similar tier, the nearest kept question by cosine (HNSW, iterative scan: two queries)."""
    digest = question_hash(question)
    entries = CachedAnswer.objects.filter(version_id=version_id, scope=scope)
    columns = ("pk", "answer", "citations", "confidence", "tokens")
    row = entries.filter(question_hash=digest).values_list(*columns).first()
    if row is not None:
        return _found(row, similarity=1.0, exact=True), None
    if mode != AnswerCache.SIMILAR:
        return None, None
    vector = embed_question(question)
    nearest = (
        entries.filter(embedding__isnull=False)
        .annotate(distance=CosineDistance("embedding", vector))
        .order_by("distance")
        .values_list(*columns, "question", "distance")
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # As retrieval does (agents.knowledge.retrieval): the index keeps scanning until it
        # finds rows of this version and scope, instead of missing them among other scopes'.
        cursor.execute(_SCAN_SETTINGS)
        row = nearest.first()
    if row is None:
        return None, vector
    similarity = 1.0 - float(row[-1])
    if similarity < settings.WARDEN_ANSWER_CACHE_SIMILARITY or not may_match(question, row[-2]):
        return None, vector
    return _found(row, similarity=round(similarity, 4), exact=False), vector


def _found(row: tuple, *, similarity: float, exact: bool) -> Found:
    entry, answer, citations, confidence, tokens = row[:5]
    return Found(entry, answer, citations, confidence, tokens, similarity, exact)


_SCAN_SETTINGS = (
    "SELECT set_config('hnsw.iterative_scan', 'strict_order', true), "
    "set_config('hnsw.ef_search', '40', true)"
)


_WORD = re.compile(r"[a-z0-9]+")
# Words that turn a question into its opposite ("non-birth parents", "can't"): sentence
# embeddings barely register them ("birth" / "non-birth parents": 0.972).
_NEGATIONS = frozenset({"no", "non", "not", "never", "without", "nor", "cannot", "t"})


def may_match(asked: str, kept: str) -> bool:
    """Whether a similar hit may join two questions at all: the same negating words, and the
    same numbers ("delayed 2 hours" / "4 hours": 0.976; "the 3rd floor" / "the 5th")."""

    def marks(text: str) -> tuple[set[str], set[str]]:
        words = _WORD.findall(normalised(text))  # "can't" is "cannot", "isn't" is "is not"
        return (
            {w for w in words if w in _NEGATIONS},
            {w for w in words if any(c.isdigit() for c in w)},
        )

    return marks(asked) == marks(kept)


def embed_question(question: str) -> list[float]:
    from agents.embedding import embed  # numpy and the weights: a worker's load

    return embed([normalised(question)])[0].tolist()


def renumbered(found: Found, passages: list[dict]) -> tuple[str, list[dict]] | None:
    """The kept answer with its citation markers renumbered to this run's passages (by chunk),
    and its citations as this run numbers them; None if a passage it cites is not among them
    (changed, or not retrieved for this question: the answer is not served)."""
    by_chunk = {p["chunk"]: p["n"] for p in passages if not p.get("quarantined")}
    numbers: dict[int, int] = {}
    for citation in found.citations:
        n = by_chunk.get(citation["chunk"])
        if n is None:
            return None
        numbers[citation["n"]] = n
    answer = _MARKER.sub(lambda m: f"[{numbers.get(int(m[1]), int(m[1]))}]", found.answer)
    return answer, [{**c, "n": numbers[c["n"]]} for c in found.citations]


def keepable(*, question: str, answer: str, citations: list[dict]) -> bool:
    """Whether an answer may be kept: no personal data in the question or the answer (the
    entry holds them in clear), and every marker in it names a passage it cites (else a
    renumbered copy could point a number at a passage the answer never meant)."""
    from audit.pii import find

    if not answer.strip() or find(question) or find(answer):
        return False
    marked = {int(m) for m in _MARKER.findall(answer)}
    return marked == {c["n"] for c in citations}


def cached_answer_keep(
    *,
    run: Run,
    scope: str,
    question: str,
    embedding: list[float] | None,
    answer: str,
    citations: list[dict],
    confidence: float | None,
    knowledge_bases: list[int],
    tokens: int,
    mode: str,
) -> None:
    """Keep a delivered answer (a second one for the same question in the same scope is
    ignored: the first stays)."""
    if (
        embedding is None
        and run.agent is not None
        and run.agent.answer_cache == AnswerCache.SIMILAR
    ):
        embedding = embed_question(question)
    CachedAnswer.objects.bulk_create(
        [
            CachedAnswer(
                agent_id=cast(int, run.agent_id),
                version_id=cast(int, run.version_id),
                scope=scope,
                question=question,
                question_hash=question_hash(question),
                embedding=embedding,
                answer=answer,
                citations=citations,
                confidence=confidence,
                knowledge_bases=sorted(knowledge_bases),
                documents=sorted({c["document"] for c in citations}),
                tokens=tokens,
                run=run,
            )
        ],
        ignore_conflicts=True,
    )


def cached_answer_hit(*, entry: int) -> None:
    CachedAnswer.objects.filter(pk=entry).update(hits=F("hits") + 1)


def cached_answers_invalidate(*, knowledge_base_ids) -> int:
    """Drop every kept answer whose asker could read one of these knowledge bases (a document
    of it was added, changed, re-embedded or deleted: what was answered may no longer be)."""
    ids = sorted({int(pk) for pk in knowledge_base_ids})
    if not ids:
        return 0
    deleted, _ = CachedAnswer.objects.filter(knowledge_bases__overlap=ids).delete()
    return deleted


def document_deleted(*, instance, **_signal) -> None:
    """post_delete of a Document: its knowledge base's kept answers go with it."""
    cached_answers_invalidate(knowledge_base_ids=[instance.knowledge_base_id])


def cached_answers_prune(*, idle: timedelta | None = None) -> int:
    """Drop the kept answers of versions that no longer serve: not their agent's live version,
    and no run of theirs started for `idle` (a release's candidate that still serves some
    conversations keeps its answers). A new version needs none of this to be safe (entries are
    filed by version); it only frees the space."""
    idle = timedelta(seconds=settings.WARDEN_ANSWER_CACHE_IDLE_SECONDS) if idle is None else idle
    since = timezone.now() - idle
    serving = Run.objects.filter(version_id=OuterRef("version_id"), created_at__gte=since)
    live = Agent.objects.filter(pk=OuterRef("agent_id"), live_version_id=OuterRef("version_id"))
    stale = CachedAnswer.objects.filter(~Q(Exists(live)), ~Q(Exists(serving)))
    deleted, _ = stale.delete()
    return deleted
