"""Knowledge bases: documents, their chunks, and the vectors and words retrieval searches."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from pgvector.django import HnswIndex, VectorField

from governance.querysets import RestrictedQuerySet

DIMENSIONS = 384  # what the chunk column stores; an embedding model must produce exactly this
LOCAL_EMBEDDER = "local/all-MiniLM-L6-v2"


class KnowledgeBase(models.Model):
    """Documents an agent retrieves passages from. Who may read it: its owner and whoever holds
    `read_knowledgebase` on it (governance.access, through guardian's object permissions).

    A conversation's own knowledge base (`conversation` set: the files its owner attached in
    the chat) is private: only its owner reads it, whatever is granted (governance.access's
    `governed_private_field`), and only that conversation's runs retrieve from it."""

    governed_owner_field = "owner"
    governed_private_field = "conversation"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="knowledge_bases"
    )
    embedding_route = models.ForeignKey(
        "agents.ModelRoute",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty: the bundled all-MiniLM-L6-v2, on the CPU. Otherwise the first "
        f"deployment of this route, through litellm; it must return {DIMENSIONS} dimensions.",
    )
    embedded_with = models.CharField(
        max_length=300,
        blank=True,
        editable=False,
        help_text="The embedding model the stored vectors come from.",
    )
    chunk_tokens = models.PositiveSmallIntegerField(
        default=200, validators=[MinValueValidator(32), MaxValueValidator(2000)]
    )
    chunk_overlap = models.PositiveSmallIntegerField(
        default=30, validators=[MaxValueValidator(500)]
    )
    trusted = models.BooleanField(
        "trusted source",
        default=False,
        help_text="Only people you trust write its documents. Untrusted (the default): a tool "
        "call after its passages were read waits for a reviewer, whatever the tool's approval "
        "setting (read-only tools excepted). Its passages are still scanned and quarantined.",
    )
    discusses_attacks = models.BooleanField(
        "discusses attacks",
        default=False,
        help_text="Its documents quote or report attacks (security advisories, red-team "
        "reports): a passage that looks like a prompt injection is let through, recorded as a "
        "security document, unless it scores far above the detector's threshold.",
    )
    # While its documents are embedded again with a new model: how many, how many are done
    # (both 0 otherwise). The page's progress; retrieval does not read them.
    reembed_total = models.PositiveIntegerField(default=0, editable=False)
    reembed_done = models.PositiveIntegerField(default=0, editable=False)
    conversation = models.OneToOneField(
        "agents.Conversation",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        editable=False,
        related_name="upload_base",
        help_text="The conversation whose attached files these are: private to its owner, "
        "deleted with it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RestrictedQuerySet.as_manager()

    class Meta:
        permissions = [("read_knowledgebase", "Can read the knowledge base")]

    def __str__(self) -> str:
        return self.name

    def files(self) -> models.QuerySet[Document]:
        """Its documents, oldest first, without their content: a conversation's attached files
        as the chat lists them."""
        return self.documents.defer("content").order_by("created_at", "pk")

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.chunk_overlap * 2 >= self.chunk_tokens:
            raise ValidationError(
                {"chunk_overlap": "The overlap must be less than half the chunk size."}
            )


class DocumentSource(models.TextChoices):
    UPLOAD = "upload"
    URL = "url"


class DocumentStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    DUPLICATE = "duplicate"


class Document(models.Model):
    """One file or web page of a knowledge base, as uploaded or fetched, and where its reading
    stands (`status`, `error` for the person who added it)."""

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="documents"
    )
    source = models.CharField(max_length=8, choices=DocumentSource.choices)
    url = models.URLField(max_length=2000, blank=True)
    filename = models.CharField(max_length=300, blank=True)
    title = models.CharField(max_length=300, blank=True)
    content = models.BinaryField(editable=False, default=b"")  # as uploaded or fetched
    content_hash = models.CharField(max_length=64, blank=True, db_index=True)
    size = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=12, choices=DocumentStatus.choices, default=DocumentStatus.QUEUED
    )
    error = models.TextField(blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    token_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["knowledge_base", "status"], name="document_kb_status")]

    def __str__(self) -> str:
        return self.title or self.filename or self.url or f"document {self.pk}"

    @property
    def progress(self) -> str:
        """Where its reading stands, in the chat's words."""
        return _PROGRESS.get(self.status, self.status)


_PROGRESS: dict[str, str] = {
    DocumentStatus.QUEUED: "queued",
    DocumentStatus.PROCESSING: "ingesting",
    DocumentStatus.READY: "ready",
    DocumentStatus.FAILED: "failed",
    DocumentStatus.DUPLICATE: "already attached",
}


class Chunk(models.Model):
    """A passage of a document: what retrieval returns and a citation points at."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    # Denormalised from the document, so the permission filter needs no join.
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField()
    heading = models.CharField(max_length=300, blank=True)
    text = models.TextField()
    tokens = models.PositiveIntegerField(default=0)
    embedding = VectorField(dimensions=DIMENSIONS)
    search = models.GeneratedField(
        expression=SearchVector("heading", "text", config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["document", "position"], name="chunk_position")
        ]
        indexes = [
            # m and ef_construction above pgvector's defaults (16, 64): at a million chunks in
            # well-separated topics the default graph leaves some topics unreachable, and
            # their queries find none of their neighbours (bench/retrieval.py: recall@10 0.89
            # with 11 of 200 queries lost, against 0.98 and 2; the build takes 1.7 times as
            # long).
            HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                m=24,
                ef_construction=128,
                opclasses=["vector_cosine_ops"],
            ),
            GinIndex(fields=["search"], name="chunk_search"),
        ]  # the permission filter uses the foreign key's own index on knowledge_base

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"
