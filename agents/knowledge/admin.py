"""Knowledge bases in the admin: documents with their status and errors, uploads and URLs,
re-ingesting, and a change of embedding model checked before it is saved."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from agents.knowledge.embedders import EmbeddingError, RouteEmbedder
from agents.knowledge.extract import too_big
from agents.knowledge.models import Document, DocumentStatus, KnowledgeBase
from agents.knowledge.selectors import knowledge_base_progress
from agents.knowledge.services import (
    document_add,
    document_add_url,
    document_reingest,
    knowledge_base_reembed_queue,
    max_bytes,
)
from governance.access import restrict
from governance.access_admin import GovernedAdminMixin
from governance.models import Action


class KnowledgeBaseForm(forms.ModelForm):
    class Meta:
        model = KnowledgeBase
        fields = (
            "name",
            "slug",
            "description",
            "owner",
            "embedding_route",
            "chunk_tokens",
            "chunk_overlap",
            "trusted",
            "discusses_attacks",
        )

    def clean_embedding_route(self):
        route = self.cleaned_data.get("embedding_route")
        changed = "embedding_route" in self.changed_data
        if route is not None and changed:
            try:  # refuse a model of the wrong dimension now, not after re-embedding
                RouteEmbedder(route).embed(["dimension check"])
            except EmbeddingError as exc:
                raise forms.ValidationError(str(exc)) from None
        return route


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        if isinstance(data, list | tuple):
            return [super(MultipleFileField, self).clean(item, initial) for item in data]
        return [super().clean(data, initial)] if data else []


class AddDocumentsForm(forms.Form):
    # The metaclass takes a declared field off the class (the form's `files` is the upload
    # dict), which django-stubs cannot see.
    files = MultipleFileField(  # type: ignore[assignment]
        required=False, help_text=".txt, .md, .html or .pdf; several at once."
    )
    urls = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One URL per line: web pages or files on public addresses.",
    )

    def clean_urls(self):
        field = forms.URLField(assume_scheme="https")
        return [
            field.clean(line.strip())
            for line in self.cleaned_data["urls"].splitlines()
            if line.strip()
        ]

    def clean(self):
        data = super().clean()
        if not data.get("files") and not data.get("urls"):
            raise forms.ValidationError("Choose files or give URLs.")
        return data


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(GovernedAdminMixin, admin.ModelAdmin):
    governed_action = "read"
    form = KnowledgeBaseForm
    list_display = ("name", "slug", "owner", "ready", "queued", "failed", "embedded_with")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("embedded_with",)

    def get_queryset(self, request):
        counts = {
            status: Count("documents", filter=Q(documents__status=status))
            for status in DocumentStatus.values
        }
        # The API's rule: a base the viewer may not read is not here (a denial wins, superusers
        # included), nor its change, Access and "Add documents" pages.
        readable = restrict(super().get_queryset(request), request.user, Action.READ)
        return readable.annotate(**counts)

    @admin.display(description="ready")
    def ready(self, obj) -> int:
        return obj.ready

    @admin.display(description="queued")
    def queued(self, obj) -> int:
        return obj.queued + obj.processing

    @admin.display(description="failed")
    def failed(self, obj) -> int:
        return obj.failed

    def get_urls(self):
        return [
            path(
                "<int:pk>/add-documents/",
                self.admin_site.admin_view(self.add_documents),
                name="agents_knowledgebase_add_documents",
            ),
            path(
                "<int:pk>/progress/",
                self.admin_site.admin_view(self.progress),
                name="agents_knowledgebase_progress",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # Its documents with their status and errors, and the progress of their reading
        # (agents/knowledge/selectors.py), which the page follows from `progress` below.
        base = self.get_object(request, object_id)
        if base is not None:
            extra_context = {**(extra_context or {}), "progress": knowledge_base_progress(base)}
        return super().change_view(request, object_id, form_url, extra_context)

    def progress(self, request, pk: int):
        """The documents' progress as JSON, which the knowledge base's page asks for every few
        seconds while documents are read or embedded again (static/portal/progress.js)."""
        base = get_object_or_404(self.get_queryset(request), pk=pk)
        if not self.has_view_permission(request, base):
            raise PermissionDenied
        body = knowledge_base_progress(base).as_dict(
            document_url=lambda document: reverse("admin:agents_document_change", args=[document])
        )
        return JsonResponse(body)  # admin_view: never cached

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "embedding_route" in form.changed_data:
            knowledge_base_reembed_queue(knowledge_base=obj)
            messages.info(request, "The documents are being embedded again in the background.")

    def add_documents(self, request, pk: int):
        base = get_object_or_404(self.get_queryset(request), pk=pk)
        if not self.has_change_permission(request, base):
            raise PermissionDenied
        posted = request.method == "POST"
        form = AddDocumentsForm(request.POST, request.FILES) if posted else AddDocumentsForm()
        if posted and form.is_valid():
            added = duplicates = 0
            for upload in form.cleaned_data["files"]:
                if upload.size > max_bytes():
                    problem = too_big(upload.size, max_bytes())
                    messages.error(request, f"Not added: {upload.name} ({problem}).")
                    continue
                _document, created = document_add(
                    knowledge_base=base, actor=request.user, name=upload.name, data=upload.read()
                )
                added, duplicates = added + created, duplicates + (not created)
            for url in form.cleaned_data["urls"]:
                document_add_url(knowledge_base=base, actor=request.user, url=url)
                added += 1
            note = f"{added} document(s) queued; they are read in the background."
            if duplicates:
                note += f" {duplicates} file(s) were already here and were skipped."
            messages.success(request, note)
            return redirect(reverse("admin:agents_knowledgebase_change", args=[base.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": base,
            "form": form,
            "title": f"Add documents to {base}",
            "page_title": "Add documents",
        }
        return TemplateResponse(request, "admin/agents/knowledgebase/add_documents.html", context)


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ("__str__", "knowledge_base", "source", "status", "chunk_count", "error")
    list_filter = ("status", "source", ("knowledge_base", admin.RelatedOnlyFieldListFilter))
    search_fields = ("title", "filename", "url")
    readonly_fields = (
        "knowledge_base",
        "source",
        "url",
        "filename",
        "title",
        "content_hash",
        "size",
        "status",
        "error",
        "chunk_count",
        "token_count",
        "created_at",
        "ingested_at",
    )
    fields = readonly_fields
    actions = ["reingest"]

    def get_queryset(self, request):
        # Only the documents of the bases the viewer may read (governance.access.restrict).
        readable = restrict(KnowledgeBase.objects.all(), request.user, Action.READ)
        return super().get_queryset(request).filter(knowledge_base__in=readable).defer("content")

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Read the selected documents again")
    def reingest(self, request, queryset):
        for document in queryset:
            document_reingest(document=document, actor=request.user)
        messages.success(request, f"{queryset.count()} document(s) queued again.")
