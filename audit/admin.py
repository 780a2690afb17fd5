from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html

from audit import chain
from audit.models import AuditAnchor, AuditEvent
from audit.selectors import EventFilter, audit_export_lines, audit_verify_chain
from audit.streaming import stream_lines

# ModelAdmin is generic in django-stubs only; at run time it takes no parameter.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin


class ReadOnlyAdmin(_ModelAdmin):
    """Nothing is added, changed or deleted from the admin: what it shows is written by its
    services alone (the trail, append-only; runs; webhook deliveries; decisions)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ExportForm(forms.Form):
    since = forms.DateTimeField(required=False, help_text="From this time (inclusive).")
    until = forms.DateTimeField(required=False, help_text="Before this time.")
    actor = forms.CharField(required=False, help_text="user, user:ID, system, or a username.")
    action = forms.CharField(required=False, help_text="An action, or a prefix such as run.*")
    target = forms.CharField(required=False, help_text="TYPE or TYPE:ID, such as auth.user:3.")
    run = forms.CharField(required=False)
    format = forms.ChoiceField(choices=[("jsonl", "JSON lines"), ("csv", "CSV")])


# Every hashed field and the hash, in the chain's order; data shown pretty-printed.
_EVENT_FIELDS: tuple[str, ...] = tuple(
    "pretty_data" if name == "data" else name for name in chain.CSV_COLUMNS
)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "time", "actor_label", "action", "target", "run")
    list_filter = ("actor_type", "action")
    search_fields = ("action", "actor_label", "target_label", "target_id", "run", "conversation")
    date_hierarchy = "time"
    change_list_template = "admin/audit/auditevent/change_list.html"
    fields = _EVENT_FIELDS
    readonly_fields = fields

    @admin.display(description="target")
    def target(self, event: AuditEvent) -> str:
        return f"{event.target_type}:{event.target_id} {event.target_label}".strip()

    @admin.display(description="data")
    def pretty_data(self, event: AuditEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(json.loads(event.data), indent=2))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("verify/", view(self.verify_view), name="audit_auditevent_verify"),
            path("export/", view(self.export_view), name="audit_auditevent_export"),
            *super().get_urls(),
        ]

    def verify_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return redirect("admin:audit_auditevent_changelist")
        report = audit_verify_chain()
        if report.ok:
            messages.success(request, report.summary())
        else:
            messages.error(request, report.summary())
        return redirect("admin:audit_auditevent_changelist")

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = ExportForm(request.GET or None)
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            filters = EventFilter(
                since=data["since"],
                until=data["until"],
                actor=data["actor"].strip(),
                action=data["action"].strip(),
                target=data["target"].strip(),
                run=data["run"].strip(),
            )
            fmt = data["format"]
            lines = audit_export_lines(filters=filters, fmt=fmt)
            response = StreamingHttpResponse(
                stream_lines(lines),
                content_type="text/csv" if fmt == "csv" else "application/x-ndjson",
            )
            stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
            response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
            return response
        context = {
            **self.admin_site.each_context(request),
            "title": "Export audit events",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/audit/auditevent/export.html", context)


@admin.register(AuditAnchor)
class AuditAnchorAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "time", "hash")
    fields = ("sequence", "time", "heads", "prev_hash", "hash")
    readonly_fields = fields
