"""Reads of knowledge bases."""

from __future__ import annotations

from django.db.models import QuerySet

from agents.knowledge.models import Document, KnowledgeBase
from governance.access import NoAccess, access_knowledge_base
from governance.models import Action


def readable_ids(user, among: list[int] | None = None) -> list[int]:
    """Ids of the knowledge bases `user` may read (governance.access), restricted to `among`
    when given. Without `among`, no conversation's own: those are searched only when named
    (by a run of that conversation)."""
    bases = KnowledgeBase.objects.restrict(user, Action.READ)
    if among is not None:
        bases = bases.filter(pk__in=among)
    else:
        bases = bases.filter(conversation__isnull=True)
    return sorted(bases.values_list("pk", flat=True))


def conversation_base_ids(conversation_id: int | None) -> list[int]:
    """The conversation's own knowledge base, as a list of ids (empty: no file attached yet)."""
    if conversation_id is None:
        return []
    return list(
        KnowledgeBase.objects.filter(conversation_id=conversation_id).values_list("pk", flat=True)
    )


def conversation_files(conversation) -> QuerySet[Document]:
    """The files attached to `conversation` (whose owner is asking), oldest first, without
    their content."""
    return (
        Document.objects.filter(knowledge_base__conversation=conversation)
        .defer("content")
        .order_by("created_at", "pk")
    )


def access_conversation_file(user, document_id) -> Document:
    """A file attached to one of `user`'s conversations (access_document: its knowledge base
    is private to its owner); else NoAccess, missing and forbidden alike."""
    document = access_document(user, document_id)
    if document.knowledge_base.conversation_id is None:
        raise NoAccess("no such document")
    return document


def access_knowledge_base_by_slug(user, slug: str) -> KnowledgeBase:
    """access_knowledge_base, for a knowledge base named by its slug."""
    pk = KnowledgeBase.objects.filter(slug=slug).values_list("pk", flat=True).first()
    return access_knowledge_base(user, pk)


def may_add_documents(user, knowledge_base: KnowledgeBase) -> bool:
    """Whether `user`, who may read `knowledge_base`, may also add documents to it: its owner,
    or whoever may change knowledge bases in the admin (`agents.change_knowledgebase`). Nobody,
    to a conversation's own: files reach it through the chat, under its limits
    (agents.knowledge.services.conversation_file_add)."""
    if knowledge_base.conversation_id is not None:
        return False
    if knowledge_base.owner_id == user.pk:
        return True
    return user.has_perm("agents.change_knowledgebase")


def documents_of(knowledge_base: KnowledgeBase) -> QuerySet[Document]:
    """Its documents without their content (up to the size limit each)."""
    return Document.objects.filter(knowledge_base=knowledge_base).defer("content")


def access_document(user, document_id) -> Document:
    """The document, if `user` may read its knowledge base; else NoAccess (missing and
    forbidden alike)."""
    readable = KnowledgeBase.objects.restrict(user, Action.READ).values("pk")
    try:
        return (
            Document.objects.defer("content")
            .select_related("knowledge_base")
            .get(pk=int(document_id), knowledge_base__in=readable)
        )
    except (Document.DoesNotExist, ValueError, TypeError):
        raise NoAccess("no such document") from None
