"""Retrieval: hybrid (vector and full text, fused by reciprocal rank), filtered inside the SQL
to the knowledge bases the actor may read.

The vector half asks the HNSW index for the nearest chunks *among the readable knowledge
bases*; with pgvector's iterative scans (`hnsw.iterative_scan`) the index keeps scanning until
it has found enough rows that pass the filter, so a user who may read 1 % of the chunks still
gets their nearest ones instead of the few that happened to be in the first candidates.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass

import numpy as np
import psycopg
from django.db import transaction

from agents.knowledge.embedders import Embedder, embedder_for
from agents.knowledge.models import KnowledgeBase
from agents.knowledge.selectors import readable_ids
from tools.db import raw_cursor

RRF_K = 60  # the usual reciprocal-rank-fusion constant
EF_SEARCH = 100  # HNSW candidates per scan step: recall against latency (bench/retrieval.py)


@dataclass(frozen=True)
class Passage:
    chunk: int
    document: int
    title: str
    knowledge_base: int
    position: int
    heading: str
    text: str
    score: float  # fused reciprocal-rank score: higher is better
    similarity: float | None  # cosine similarity to the query, when the vector half found it

    def as_dict(self) -> dict:
        return asdict(self)


def knowledge_search(
    *, actor, query: str, knowledge_bases: list[int] | None = None, k: int = 5
) -> list[Passage]:
    """The `k` passages most relevant to `query` from the knowledge bases `actor` may read
    (and, if given, only among `knowledge_bases`)."""
    query = query.strip()
    allowed = readable_ids(actor, knowledge_bases)
    if not query or not allowed or k < 1:
        return []
    by_embedder: dict[str, tuple[Embedder, list[int]]] = {}
    for base in KnowledgeBase.objects.filter(pk__in=allowed).select_related("embedding_route"):
        embedder = embedder_for(base)
        by_embedder.setdefault(embedder.identity, (embedder, []))[1].append(base.pk)
    found: list[Passage] = []
    for embedder, ids in by_embedder.values():
        vector = embedder.embed([query])[0]
        found += hybrid_search(knowledge_bases=ids, embedding=vector, text=query, k=k)
    return sorted(found, key=lambda p: -p.score)[:k]


def nearest_chunks(*, knowledge_bases: list[int], embedding, k: int) -> list[tuple[int, float]]:
    """(chunk id, cosine distance) of the `k` nearest chunks in `knowledge_bases`, from the
    HNSW index with iterative scans."""
    with transaction.atomic(), _cursor() as cursor:
        _scan_settings(cursor)
        cursor.execute(_NEAREST, [_vector(embedding), knowledge_bases, k])
        return cursor.fetchall()


def hybrid_search(*, knowledge_bases: list[int], embedding, text: str, k: int) -> list[Passage]:
    candidates = max(4 * k, 20)
    with transaction.atomic(), _cursor() as cursor:
        _scan_settings(cursor)
        cursor.execute(
            _HYBRID,
            {
                "vector": _vector(embedding),
                "text": text,
                "kbs": knowledge_bases,
                "candidates": candidates,
                "k": k,
                "rrf": RRF_K,
            },
        )
        rows = cursor.fetchall()
    return [_passage(row) for row in rows]


def _passage(row: tuple) -> Passage:
    """A row of _HYBRID as a Passage: its distance, if any, as a similarity."""
    chunk, document, title, knowledge_base, position, heading, text, score, distance = row
    return Passage(
        chunk,
        document,
        title,
        knowledge_base,
        position,
        heading,
        text,
        score,
        similarity=None if distance is None else 1 - distance,
    )


def _scan_settings(cursor) -> None:
    # SET LOCAL: for this transaction only, so pooled connections are left as they were.
    cursor.execute(_SCAN_SETTINGS, [str(EF_SEARCH)])


_with_vectors: weakref.WeakSet = weakref.WeakSet()


def _cursor() -> psycopg.Cursor:
    """A server-side-binding cursor on Django's connection (so inside its transaction) that
    sends vectors in pgvector's binary form: formatting 384 floats as text cost a fifth of a
    query's time (bench/retrieval.py)."""
    cursor = raw_cursor()
    if cursor.connection not in _with_vectors:
        from pgvector.psycopg import register_vector

        register_vector(cursor.connection)
        _with_vectors.add(cursor.connection)
        cursor.close()
        cursor = raw_cursor()  # a cursor takes its connection's adapters when it is made
    return cursor


def _vector(embedding) -> np.ndarray:
    return np.asarray(embedding, dtype=np.float32)


# A custom plan every time: whether the index or a scan of the readable rows is faster depends
# on how many rows the filter keeps, which a prepared statement's generic plan cannot know.
_SCAN_SETTINGS = (
    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
    "set_config('hnsw.ef_search', %s, true), "
    "set_config('plan_cache_mode', 'force_custom_plan', true)"
)
# relaxed_order may return the index's rows slightly out of order: sort them again.
_NEAREST = """
SELECT id, distance FROM (
    SELECT id, embedding <=> %s::vector AS distance FROM agents_chunk
    WHERE knowledge_base_id = ANY(%s) ORDER BY distance LIMIT %s
) nearest ORDER BY distance
"""

_HYBRID = """
WITH nearest AS MATERIALIZED (
    SELECT id, embedding <=> %(vector)s::vector AS distance FROM agents_chunk
    WHERE knowledge_base_id = ANY(%(kbs)s)
    ORDER BY distance LIMIT %(candidates)s
), by_vector AS (
    SELECT id, distance, row_number() OVER (ORDER BY distance) AS rank FROM nearest
), by_text AS (
    SELECT id, row_number() OVER (ORDER BY ts_rank_cd(search, query) DESC, id) AS rank
    FROM agents_chunk, websearch_to_tsquery('english', %(text)s) AS query
    WHERE knowledge_base_id = ANY(%(kbs)s) AND search @@ query
    ORDER BY rank LIMIT %(candidates)s
), fused AS (
    SELECT id, sum(1.0 / (%(rrf)s + rank)) AS score, min(distance) AS distance FROM (
        SELECT id, rank, distance FROM by_vector
        UNION ALL SELECT id, rank, NULL FROM by_text
    ) ranked GROUP BY id
)
SELECT c.id, c.document_id, d.title, c.knowledge_base_id, c.position, c.heading, c.text,
    fused.score::float, fused.distance
FROM fused JOIN agents_chunk c ON c.id = fused.id JOIN agents_document d ON d.id = c.document_id
ORDER BY fused.score DESC, c.id LIMIT %(k)s
"""
