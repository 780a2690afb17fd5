"""One interface for embedding passages and queries, whichever model a knowledge base uses."""

from __future__ import annotations

from typing import Protocol

from agents.knowledge.chunking import word_tokens
from agents.knowledge.models import DIMENSIONS, LOCAL_EMBEDDER, KnowledgeBase


class EmbeddingError(Exception):
    """The embedding model cannot serve this knowledge base; the message says why."""


class Embedder(Protocol):
    identity: str  # what the stored vectors are recorded as coming from

    def embed(self, texts: list[str]) -> list[list[float]]: ...

    def count_tokens(self, text: str) -> int: ...


class LocalEmbedder:
    """The bundled all-MiniLM-L6-v2: loaded once per process, batched, on the CPU."""

    identity = LOCAL_EMBEDDER

    def embed(self, texts: list[str]):
        from agents.embedding import embed

        return embed(texts)

    def count_tokens(self, text: str) -> int:
        from agents.embedding import count_tokens

        return count_tokens(text)


class RouteEmbedder:
    """A litellm embedding model behind a model route (OpenAI, Azure, Bedrock, Ollama, …)."""

    def __init__(self, route):
        self.route = route
        first = route.deployments.order_by("position").first()
        self.identity = f"{first.model if first else '?'} via {route.name}"

    def embed(self, texts: list[str]) -> list[list[float]]:
        from agents.gateway import ModelUnavailable, gateway_embed

        try:
            vectors = gateway_embed(route=self.route, texts=texts)
        except ModelUnavailable as exc:
            raise EmbeddingError(str(exc)) from exc
        for vector in vectors:
            if len(vector) != DIMENSIONS:
                raise EmbeddingError(
                    f"the embedding model of route {self.route.name} returns {len(vector)} "
                    f"dimensions; knowledge bases store {DIMENSIONS} (pick a model, or a "
                    f"`dimensions` setting, that gives {DIMENSIONS})"
                )
        return vectors

    def count_tokens(self, text: str) -> int:
        return word_tokens(text)


def embedder_for(knowledge_base: KnowledgeBase) -> Embedder:
    if knowledge_base.embedding_route_id is None:
        return LocalEmbedder()
    return RouteEmbedder(knowledge_base.embedding_route)
