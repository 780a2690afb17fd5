"""Reads of knowledge bases."""

from __future__ import annotations

from agents.knowledge.models import KnowledgeBase
from governance.models import Action


def readable_ids(user, among: list[int] | None = None) -> list[int]:
    """Ids of the knowledge bases `user` may read (governance.access), restricted to `among`
    when given."""
    bases = KnowledgeBase.objects.restrict(user, Action.READ)
    if among is not None:
        bases = bases.filter(pk__in=among)
    return sorted(bases.values_list("pk", flat=True))
