"""Reads of knowledge bases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db.models import Case, Count, Q, QuerySet, Value, When

from agents.knowledge.models import Document, DocumentStatus, KnowledgeBase
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


# Progress: what the knowledge base's page shows while documents are read or embedded again --

PROGRESS_ROWS = 200  # documents listed; the document list has them all
_NAMED_FAILURES = 3


@dataclass(frozen=True)
class DocumentRow:
    pk: int
    name: str
    status: str
    error: str
    chunks: int


@dataclass(frozen=True)
class Progress:
    """A knowledge base's documents by status, the failed and unfinished ones first, and how
    far a re-embedding has gone (0 of 0 when none is under way)."""

    counts: dict[str, int]
    documents: list[DocumentRow]
    reembed_done: int
    reembed_total: int

    @property
    def total(self) -> int:
        """Documents that count: a duplicate is another's content, read once."""
        return sum(n for status, n in self.counts.items() if status != DocumentStatus.DUPLICATE)

    @property
    def ready(self) -> int:
        return self.counts[DocumentStatus.READY]

    @property
    def failed(self) -> int:
        return self.counts[DocumentStatus.FAILED]

    @property
    def pending(self) -> int:
        return self.counts[DocumentStatus.QUEUED] + self.counts[DocumentStatus.PROCESSING]

    @property
    def working(self) -> bool:
        return bool(self.pending or self.reembed_total)

    @property
    def more(self) -> int:
        return sum(self.counts.values()) - len(self.documents)

    @property
    def summary(self) -> str:
        """ "7 of 10 documents ready; 2 being read; 1 failed: scan.pdf." and the re-embedding."""
        if not self.total:
            return "No documents yet."
        parts = [f"{self.ready} of {self.total} document{'s' if self.total != 1 else ''} ready"]
        if self.pending:
            parts.append(f"{self.pending} waiting to be read or being read")
        if self.failed:
            names = [d.name for d in self.documents if d.status == DocumentStatus.FAILED]
            shown = ", ".join(names[:_NAMED_FAILURES])
            rest = self.failed - min(len(names), _NAMED_FAILURES)
            parts.append(f"{self.failed} failed: {shown}" + (f" and {rest} more" if rest else ""))
        text = "; ".join(parts) + "."
        if self.reembed_total:
            text += (
                f" Embedding again with the new model: {self.reembed_done} of "
                f"{self.reembed_total} documents done."
            )
        return text

    def as_dict(self, *, document_url: Callable[[int], str]) -> dict:
        return {
            "total": self.total,
            "ready": self.ready,
            "pending": self.pending,
            "failed": self.failed,
            "counts": self.counts,
            "working": self.working,
            "summary": self.summary,
            "reembed": {"done": self.reembed_done, "total": self.reembed_total},
            "documents": [
                {
                    "id": d.pk,
                    "name": d.name,
                    "status": d.status,
                    "error": d.error,
                    "chunks": d.chunks,
                    "url": document_url(d.pk),
                }
                for d in self.documents
            ],
            "more": self.more,
        }


_FIRST = {
    DocumentStatus.FAILED: 0,
    DocumentStatus.PROCESSING: 1,
    DocumentStatus.QUEUED: 2,
    DocumentStatus.READY: 3,
    DocumentStatus.DUPLICATE: 4,
}


def knowledge_base_progress(knowledge_base: KnowledgeBase) -> Progress:
    """Its documents' progress, in two queries (the counts, the rows)."""
    counted = Document.objects.filter(knowledge_base=knowledge_base).aggregate(
        **{
            status: Count("pk", filter=Q(status=status))
            for status in DocumentStatus.values  # one aggregate per status, in one query
        }
    )
    order = Case(
        *(When(status=status, then=Value(rank)) for status, rank in _FIRST.items()),
        default=Value(9),
    )
    rows = (
        Document.objects.filter(knowledge_base=knowledge_base)
        .order_by(order, "-created_at", "-pk")
        .values_list("pk", "title", "filename", "url", "status", "error", "chunk_count")
    )[:PROGRESS_ROWS]
    documents = [
        DocumentRow(pk, title or filename or url or f"document {pk}", status, error, chunks)
        for pk, title, filename, url, status, error, chunks in rows
    ]
    return Progress(
        counts={status: counted[status] for status in DocumentStatus.values},
        documents=documents,
        reembed_done=knowledge_base.reembed_done,
        reembed_total=knowledge_base.reembed_total,
    )
