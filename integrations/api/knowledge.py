"""Knowledge bases: those the caller may read, their documents' ingestion status, and uploads
queued for ingestion by the same service as the admin's "Add documents"."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from django.db.models import Count, Q
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, generics, serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from agents.knowledge.extract import SUPPORTED, too_big
from agents.knowledge.models import Document, DocumentStatus, KnowledgeBase
from agents.knowledge.selectors import (
    access_document,
    access_knowledge_base_by_slug,
    documents_of,
    may_add_documents,
)
from agents.knowledge.services import document_add, max_bytes
from governance.access import NoAccess
from governance.models import Action
from integrations.api.auth import HasScope

# Reading what one uploaded is part of uploading; admin:read reads the registry.
READ = ["admin:read", "knowledge:write"]


class KnowledgeBaseSerializer(serializers.ModelSerializer):
    documents = serializers.SerializerMethodField()

    class Meta:
        model = KnowledgeBase
        fields = ["slug", "name", "description", "documents", "created_at", "updated_at"]

    def get_documents(self, base) -> dict[str, int]:
        """How many documents are in each ingestion state."""
        return {status: getattr(base, f"n_{status}") for status in DocumentStatus.values}


class DocumentSerializer(serializers.ModelSerializer):
    knowledge_base: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    url = serializers.SerializerMethodField()

    class Meta:
        model = Document
        fields = [
            *("id", "knowledge_base", "source", "filename", "title", "size", "content_hash"),
            *("status", "error", "chunk_count", "token_count", "created_at", "ingested_at"),
            "url",
        ]

    def get_url(self, document) -> str:
        """The document's own status URL."""
        return f"/api/v1/documents/{document.pk}"


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        allow_empty_file=False,
        help_text=f"{', '.join(SUPPORTED)}; at most WARDEN_KNOWLEDGE_MAX_BYTES.",
    )

    def validate_file(self, upload):
        if "\x00" in upload.name:
            raise serializers.ValidationError("the file name contains a NUL character")
        if PurePosixPath(upload.name).suffix.lower() not in SUPPORTED:
            raise serializers.ValidationError(f"Warden reads {', '.join(SUPPORTED)} files")
        if upload.size > max_bytes():
            raise serializers.ValidationError(too_big(upload.size, max_bytes()))
        return upload


def _knowledge_base(user, slug: str) -> KnowledgeBase:
    try:
        return access_knowledge_base_by_slug(user, slug)
    except NoAccess:
        raise exceptions.NotFound("no such knowledge base") from None


@extend_schema(
    summary="The knowledge bases the caller may read, with their documents counted by "
    "ingestion status (scope admin:read or knowledge:write)",
    tags=["knowledge"],
)
class KnowledgeBaseList(generics.ListAPIView):
    serializer_class = KnowledgeBaseSerializer
    permission_classes = [HasScope]
    required_scopes = {"*": READ}

    def get_queryset(self):
        counts = {
            f"n_{status}": Count("documents", filter=Q(documents__status=status))
            for status in DocumentStatus.values
        }
        return KnowledgeBase.objects.restrict(self.request.user, Action.READ).annotate(**counts)


@extend_schema_view(
    get=extend_schema(
        summary="A knowledge base's documents and their ingestion status (scope admin:read or "
        "knowledge:write; a knowledge base the caller may not read is a 404)",
    ),
    post=extend_schema(
        summary="Upload a document (multipart, field `file`) to be read in the background "
        "(scope knowledge:write; the knowledge base's owner or the agents.change_knowledgebase "
        "permission): 202 with its status URL, or 200 with the document already holding the "
        "same content",
        request={"multipart/form-data": UploadSerializer},
        responses={202: DocumentSerializer, 200: DocumentSerializer},
    ),
)
@extend_schema(tags=["knowledge"])
class DocumentList(generics.ListCreateAPIView):
    serializer_class = DocumentSerializer
    permission_classes = [HasScope]
    required_scopes = {"POST": ["knowledge:write"], "*": READ}
    parser_classes = [MultiPartParser]

    def get_queryset(self):
        base = _knowledge_base(self.request.user, self.kwargs["slug"])
        return documents_of(base).select_related("knowledge_base")

    def create(self, request, *args, **kwargs):
        base = _knowledge_base(request.user, self.kwargs["slug"])
        if not may_add_documents(request.user, base):
            raise exceptions.PermissionDenied("the account may not add documents here")
        upload = UploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        file = upload.validated_data["file"]
        document, created = document_add(
            knowledge_base=base, actor=request.user, name=file.name, data=file.read()
        )
        body = DocumentSerializer(document).data
        location = {"Location": body["url"]}
        return Response(body, status=202 if created else 200, headers=location)


@extend_schema(
    summary="A document and its ingestion status (scope admin:read or knowledge:write; one "
    "in a knowledge base the caller may not read is a 404)",
    tags=["knowledge"],
)
class DocumentDetail(generics.RetrieveAPIView):
    serializer_class = DocumentSerializer
    permission_classes = [HasScope]
    required_scopes = {"*": READ}

    def get_object(self):
        try:
            return access_document(self.request.user, self.kwargs["pk"])
        except NoAccess:
            raise exceptions.NotFound("no such document") from None
