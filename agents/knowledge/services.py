"""Knowledge base writes: adding documents, ingesting them (in Celery), re-embedding."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.answer_cache import cached_answers_invalidate
from agents.faults import failpoint, transient
from agents.knowledge.chunking import Piece, chunk
from agents.knowledge.embedders import Embedder, EmbeddingError, embedder_for
from agents.knowledge.extract import SUPPORTED, ExtractError, extract
from agents.knowledge.models import (
    Chunk,
    Document,
    DocumentSource,
    DocumentStatus,
    KnowledgeBase,
)
from audit.services import Target, audit_record
from tools.outbound import OutboundError, fetch

logger = logging.getLogger(__name__)
EMBED_BATCH = 64
_BY_CONTENT_TYPE = {
    "text/html": ".html",
    "application/xhtml+xml": ".html",
    "text/markdown": ".md",
    "text/plain": ".txt",
    "application/pdf": ".pdf",
}


def max_bytes() -> int:
    return settings.WARDEN_KNOWLEDGE_MAX_BYTES


def document_add(
    *, knowledge_base: KnowledgeBase, actor, name: str, data: bytes, enqueue: bool = True
) -> tuple[Document, bool]:
    """Queue an uploaded file for ingestion. The same content twice in one knowledge base is
    one document: the existing one is returned, with False."""
    digest = hashlib.sha256(data).hexdigest()
    existing = Document.objects.filter(knowledge_base=knowledge_base, content_hash=digest).first()
    if existing is not None:
        return existing, False
    with transaction.atomic():
        document = Document.objects.create(
            knowledge_base=knowledge_base,
            source=DocumentSource.UPLOAD,
            filename=PurePosixPath(name).name[:300],
            title=PurePosixPath(name).stem[:300],
            content=data,
            content_hash=digest,
            size=len(data),
        )
        _audit_added(document, actor)
        if enqueue:
            transaction.on_commit(lambda: _enqueue(document.pk))
    return document, True


def document_add_url(
    *, knowledge_base: KnowledgeBase, actor, url: str, enqueue: bool = True
) -> Document:
    """Queue a web page or file to be fetched (SSRF-safe, tools/outbound.py) and ingested."""
    with transaction.atomic():
        document = Document.objects.create(
            knowledge_base=knowledge_base, source=DocumentSource.URL, url=url, title=url[:300]
        )
        _audit_added(document, actor)
        if enqueue:
            transaction.on_commit(lambda: _enqueue(document.pk))
    return document


def document_reingest(*, document: Document, actor) -> Document:
    """Read the document again (a URL is fetched again); its chunks are replaced at once when
    the new ones are ready, and kept if reading fails."""
    with transaction.atomic():
        Document.objects.filter(pk=document.pk).update(status=DocumentStatus.QUEUED, error="")
        audit_record(
            actor=actor,
            action="knowledge.document_reingest_requested",
            target=_target(document),
            data={"knowledge_base": document.knowledge_base_id},
        )
        transaction.on_commit(lambda: _enqueue(document.pk))
    document.refresh_from_db()
    return document


def _audit_added(document: Document, actor) -> None:
    audit_record(
        actor=actor,
        action="knowledge.document_added",
        target=_target(document),
        data={
            "knowledge_base": document.knowledge_base_id,
            "source": document.source,
            "url": document.url,
            "size": document.size,
        },
    )


def _enqueue(document_id: int) -> None:
    from agents.tasks import knowledge_ingest_task

    knowledge_ingest_task.delay(document_id)


def document_ingest(*, document_id: int) -> Document:
    """Read, chunk and embed one document, then replace its chunks in one transaction. A
    document that cannot be read is marked failed with the reason; only a transient error
    (agents.faults: the database or Redis away) raises, for the task to retry."""
    document = Document.objects.select_related("knowledge_base__embedding_route").get(
        pk=document_id
    )
    Document.objects.filter(pk=document_id).update(status=DocumentStatus.PROCESSING)
    try:
        _ingest(document)
    except Document.DoesNotExist:  # removed while it was being read: nothing left to do
        return document
    except (ExtractError, OutboundError, EmbeddingError) as exc:
        _fail(document, str(exc))
    except Exception as exc:
        if transient(exc):  # the database or Redis went away: the task tries again
            raise
        logger.exception("ingesting document %s failed", document_id)
        _fail(document, "internal error while reading it; the administrators have the details")
    document.refresh_from_db()
    return document


def _ingest(document: Document) -> None:
    base = document.knowledge_base
    content, name = _read(document)
    digest = hashlib.sha256(content).hexdigest()
    twin = (
        Document.objects.filter(knowledge_base=base, content_hash=digest)
        .exclude(pk=document.pk)
        .first()
    )
    if twin is not None:
        _mark_duplicate(document=document, twin=twin, digest=digest)
        return
    extracted = extract(name, content, max_bytes=max_bytes())
    embedder = embedder_for(base)
    pieces = chunk(
        extracted.blocks,
        max_tokens=base.chunk_tokens,
        overlap=base.chunk_overlap,
        count_tokens=embedder.count_tokens,
    )
    vectors = _embed_in_batches(embedder=embedder, pieces=pieces)
    failpoint("ingest_before_chunks")
    _replace_chunks(
        document=document,
        content=content,
        digest=digest,
        title=extracted.title,
        pieces=pieces,
        vectors=vectors,
        embedder=embedder,
    )


def _read(document: Document) -> tuple[bytes, str]:
    """The document's bytes and the file name to extract them as: fetched for a URL."""
    if document.source == DocumentSource.URL:
        fetched = fetch(document.url, max_bytes=max_bytes())
        return fetched.content, _url_name(fetched.url, fetched.content_type)
    return bytes(document.content), document.filename


def _mark_duplicate(*, document: Document, twin: Document, digest: str) -> None:
    with transaction.atomic():
        Chunk.objects.filter(document=document).delete()
        _update(
            document,
            status=DocumentStatus.DUPLICATE,
            error=f"the same content as “{twin}” (document {twin.pk})",
            content_hash=digest,
            chunk_count=0,
            token_count=0,
        )


class _Passage(Protocol):
    """What is embedded: a chunk being made (Piece) or one stored (Chunk)."""

    @property
    def heading(self) -> str: ...
    @property
    def text(self) -> str: ...


def _embed_in_batches(*, embedder: Embedder, pieces: Sequence[_Passage]) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(pieces), EMBED_BATCH):
        batch = pieces[start : start + EMBED_BATCH]
        vectors.extend(embedder.embed([embedding_text(p.heading, p.text) for p in batch]))
    return vectors


def _replace_chunks(
    *,
    document: Document,
    content: bytes,
    digest: str,
    title: str,
    pieces: list[Piece],
    vectors: list[list[float]],
    embedder: Embedder,
) -> None:
    """Swap the document's chunks for the new ones and mark it ready, audited, in one
    transaction."""
    base = document.knowledge_base
    with transaction.atomic():
        # One ingestion at a time; DoesNotExist if it was removed meanwhile (nothing written).
        Document.objects.select_for_update().get(pk=document.pk)
        Chunk.objects.filter(document=document).delete()
        Chunk.objects.bulk_create(
            [
                Chunk(
                    document=document,
                    knowledge_base=base,
                    position=piece.position,
                    heading=piece.heading[:300],
                    text=piece.text,
                    tokens=piece.tokens,
                    embedding=vector,
                )
                for piece, vector in zip(pieces, vectors, strict=True)
            ],
            batch_size=500,
        )
        _update(
            document,
            status=DocumentStatus.READY,
            error="",
            # A file attached in the chat is cited by its name (what its owner knows it by).
            title=(document.title if base.conversation_id else title or document.title)[:300],
            content=content if document.source == DocumentSource.URL else document.content,
            content_hash=digest,
            size=len(content),
            chunk_count=len(pieces),
            token_count=sum(p.tokens for p in pieces),
            ingested_at=timezone.now(),
        )
        if not base.embedded_with:
            KnowledgeBase.objects.filter(pk=base.pk).update(embedded_with=embedder.identity)
        # What its readers were answered may have changed: added, or read again changed.
        cached_answers_invalidate(knowledge_base_ids=[base.pk])
        audit_record(
            actor=None,
            action="knowledge.document_ingested",
            target=_target(document),
            data={"knowledge_base": base.pk, "chunks": len(pieces), "hash": digest},
        )


def embedding_text(heading: str, text: str) -> str:
    """What a passage is embedded as: its heading, then its text."""
    return f"{heading}\n{text}" if heading else text


def _update(document: Document, **fields) -> None:
    for name, value in fields.items():
        setattr(document, name, value)
    document.save(update_fields=list(fields))


def document_fail(document_id: int, reason: str) -> None:
    """Mark a document failed with `reason` (audited): its ingestion cannot go on."""
    _fail(Document.objects.get(pk=document_id), reason)


def _fail(document: Document, reason: str) -> None:
    with transaction.atomic():
        marked = Document.objects.filter(pk=document.pk).update(
            status=DocumentStatus.FAILED, error=reason
        )
        if not marked:  # removed meanwhile (a file its owner took out of the conversation)
            return
        audit_record(
            actor=None,
            action="knowledge.document_failed",
            target=_target(document),
            data={"knowledge_base": document.knowledge_base_id, "reason": reason},
        )


def _url_name(url: str, content_type: str) -> str:
    name = PurePosixPath(urlsplit(url).path).name or "index"
    if PurePosixPath(name).suffix.lower() in SUPPORTED:
        return name
    kind = content_type.split(";", 1)[0].strip().lower()
    return name + _BY_CONTENT_TYPE.get(kind, PurePosixPath(name).suffix or ".unknown")


def knowledge_base_reembed_queue(*, knowledge_base: KnowledgeBase) -> None:
    """After its embedding model changed (in the caller's transaction): embed its documents
    again in the background, the page showing "0 of n" from now on."""
    count = Document.objects.filter(knowledge_base=knowledge_base).count()
    KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(reembed_total=count, reembed_done=0)

    def enqueue() -> None:
        from agents.tasks import knowledge_reembed_task

        knowledge_reembed_task.delay(knowledge_base.pk)

    transaction.on_commit(enqueue)


def knowledge_base_reembed(*, knowledge_base_id: int) -> int:
    """Embed every chunk again with the knowledge base's current embedding model, one document
    per transaction, counting them done (`reembed_done` of `reembed_total`, for its page);
    returns the number of chunks. Retrieval reads the new vectors of each document as soon as
    its transaction commits."""
    base = KnowledgeBase.objects.select_related("embedding_route").get(pk=knowledge_base_id)
    bases = KnowledgeBase.objects.filter(pk=base.pk)
    documents = list(
        Document.objects.filter(knowledge_base=base).order_by("pk").values_list("pk", flat=True)
    )
    bases.update(reembed_total=len(documents), reembed_done=0)
    try:
        embedder = embedder_for(base)
        total = 0
        for document_id in documents:
            chunks = list(Chunk.objects.filter(document_id=document_id).order_by("position"))
            vectors = _embed_in_batches(embedder=embedder, pieces=chunks)
            for item, vector in zip(chunks, vectors, strict=True):
                item.embedding = vector
            with transaction.atomic():
                Chunk.objects.bulk_update(chunks, ["embedding"], batch_size=500)
                bases.update(reembed_done=F("reembed_done") + 1)
                cached_answers_invalidate(knowledge_base_ids=[base.pk])  # it retrieves anew
            total += len(chunks)
    except BaseException:
        bases.update(reembed_total=0, reembed_done=0)  # not under way any more
        raise
    with transaction.atomic():
        bases.update(embedded_with=embedder.identity, reembed_total=0, reembed_done=0)
        audit_record(
            actor=None,
            action="knowledge.reembedded",
            target=Target.of(base),
            data={"embedder": embedder.identity, "chunks": total},
        )
    return total


def _target(document: Document) -> Target:
    """The audit trail's name for a document: a file attached in the chat by its number only
    (its name may say something personal, and the trail keeps it forever)."""
    if document.knowledge_base.conversation_id is None:
        return Target.of(document)
    return Target("agents.document", str(document.pk), f"attached file {document.pk}")


# Files attached in the chat: a conversation's own knowledge base -------------------------------


class UploadRefused(Exception):
    """An attached file is refused, and nothing was written; the message is for the person who
    sent it. `status` is the HTTP status that says why, `retry_after` when to try again (s)."""

    def __init__(self, message: str, *, status: int = 400, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def upload_limit() -> int:
    """The largest file the chat accepts: WARDEN_UPLOAD_MAX_BYTES, never above what ingestion
    reads (WARDEN_KNOWLEDGE_MAX_BYTES)."""
    return min(settings.WARDEN_UPLOAD_MAX_BYTES, max_bytes())


def upload_types() -> list[str]:
    """The extensions the chat accepts: WARDEN_UPLOAD_TYPES among those ingestion reads."""
    return [t for t in settings.WARDEN_UPLOAD_TYPES if t in SUPPORTED]


def upload_check(*, name: str, size: int) -> str:
    """The file's name as kept (its last part), or UploadRefused for a type or a size the
    settings refuse. Called before the file is read, and again by conversation_file_add."""
    from agents.knowledge.extract import too_big

    clean = PurePosixPath(name.replace("\\", "/")).name.strip()[:300]
    suffix = PurePosixPath(clean).suffix.lower()
    accepted = upload_types()
    if suffix not in accepted:
        kind = f"{suffix} files" if suffix else "files without an extension"
        raise UploadRefused(f"{kind} cannot be attached; attach {', '.join(accepted)}", status=415)
    if size > upload_limit():
        raise UploadRefused(too_big(size, upload_limit()), status=413)
    if size == 0:
        raise UploadRefused("the file is empty")
    return clean


def conversation_file_add(*, conversation, actor, name: str, data: bytes) -> tuple[Document, bool]:
    """Attach a file to `actor`'s own conversation: a document of the conversation's knowledge
    base (made with the first file; an unsaved conversation is saved with it), read by a worker
    as any other (knowledge_ingest_task). The same content twice is one file: the existing one
    is returned, with False. Refused (UploadRefused, nothing written) past the type, size or
    hourly limits; another person's conversation is NoAccess."""
    from agents.models import Conversation
    from governance import ratelimits
    from governance.access import NoAccess

    if conversation.owner_id != actor.pk:
        raise NoAccess("no such conversation")
    name = upload_check(name=name, size=len(data))
    per_hour = settings.WARDEN_UPLOADS_PER_HOUR
    if per_hour and not ratelimits.hit(f"{per_hour}/hour", "upload-rate", actor.pk):
        wait = ratelimits.reset_in(f"{per_hour}/hour", "upload-rate", actor.pk)
        raise UploadRefused(
            f"you have attached {per_hour} files in the last hour, the most allowed; "
            f"try again in {max(1, round(wait / 60))} minute(s)",
            status=429,
            retry_after=wait,
        )
    digest = hashlib.sha256(data).hexdigest()
    with transaction.atomic():
        if conversation.pk is None:
            conversation.save()
        else:  # one knowledge base per conversation, even for two first files at once
            Conversation.objects.select_for_update().filter(pk=conversation.pk).first()
        base, created = KnowledgeBase.objects.get_or_create(
            conversation=conversation,
            defaults={
                "name": f"Files of conversation {conversation.pk}",
                # Random: a slug is unique among all knowledge bases, and anyone who may create
                # one could otherwise take the next conversation's.
                "slug": f"conversation-{conversation.pk}-files-{secrets.token_hex(4)}",
                "owner_id": actor.pk,
                "description": "Files attached in the chat: private to the conversation's owner.",
            },
        )
        existing = Document.objects.filter(knowledge_base=base, content_hash=digest).first()
        if existing is not None:
            return existing, False
        document = Document.objects.create(
            knowledge_base=base,
            source=DocumentSource.UPLOAD,
            filename=name,
            title=name,  # cited by its name
            content=data,
            content_hash=digest,
            size=len(data),
        )
        audit_record(
            actor=actor,
            action="knowledge.file_attached",
            target=_target(document),
            conversation=conversation.pk,
            data={
                "conversation": conversation.pk,
                "knowledge_base": base.pk,
                "knowledge_base_created": created,
                "type": PurePosixPath(name).suffix.lower(),
                "size": len(data),
                "hash": digest,
            },
        )
        transaction.on_commit(lambda: _enqueue(document.pk))
    return document, True


def conversation_file_remove(*, document: Document, actor) -> None:
    """Take a file out of its conversation (`actor` found it through access_conversation_file):
    the document and its passages are deleted, so no later run retrieves them. Earlier answers
    keep the passages they were given, in their steps."""
    with transaction.atomic():
        target = _target(document)
        deleted, _ = Document.objects.filter(pk=document.pk).delete()
        if not deleted:
            return  # removed already (a second click)
        audit_record(
            actor=actor,
            action="knowledge.file_removed",
            target=target,
            conversation=document.knowledge_base.conversation_id,
            data={
                "conversation": document.knowledge_base.conversation_id,
                "knowledge_base": document.knowledge_base_id,
                "hash": document.content_hash,
            },
        )
