"""Reads of knowledge bases, and the one check of who may read which."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from agents.knowledge.models import KnowledgeBase


def readable_knowledge_bases(user) -> QuerySet[KnowledgeBase]:
    """The knowledge bases `user` may retrieve from: the only access check for them (per-object
    permissions replace it with governance). Inactive and anonymous users read none."""
    if user is None or not getattr(user, "is_active", False):
        return KnowledgeBase.objects.none()
    if user.is_superuser:
        return KnowledgeBase.objects.all()
    return KnowledgeBase.objects.filter(
        Q(owner=user) | Q(reader_groups__in=user.groups.all())
    ).distinct()


def readable_ids(user, among: list[int] | None = None) -> list[int]:
    """Ids of the knowledge bases `user` may read, restricted to `among` when given."""
    bases = readable_knowledge_bases(user)
    if among is not None:
        bases = bases.filter(pk__in=among)
    return sorted(bases.values_list("pk", flat=True))
