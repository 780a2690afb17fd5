"""The tool registry in the admin.

Tools: JSON editors for the parameters' schema and the kind's configuration, checked as the admin
types by the same validators the model uses on save; a "test call" page that runs the tool for
real (audited) and shows the outcome. Secrets: the value is write-only (typed in, never shown
back), and every save goes through `secret_set`, which encrypts it and records the audit event."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from governance.access_admin import GovernedAdminMixin
from tools.executors import config_problem
from tools.mcp_servers import MCPUnavailable, mcp_server_sync
from tools.models import MCPServer, Secret, Tool, ToolKind
from tools.schemas import parameters_problem, text_problem, unstorable_at
from tools.secrets import secret_delete, secret_set, value_problem
from tools.services import tool_set_enabled, tool_test_call

TIMESTAMPS = ("created_at", "value_set_at", "rotated_at", "updated_at")

# ModelAdmin and ModelForm are generic in django-stubs only; at run time they take no parameter.
if TYPE_CHECKING:
    _SecretForm = forms.ModelForm[Secret]
    _ToolForm = forms.ModelForm[Tool]
    _SecretAdmin = admin.ModelAdmin[Secret]
    _ToolAdmin = admin.ModelAdmin[Tool]
    _MCPServerAdmin = admin.ModelAdmin[MCPServer]
else:
    _SecretForm = _ToolForm = forms.ModelForm
    _SecretAdmin = _ToolAdmin = _MCPServerAdmin = admin.ModelAdmin


class SecretForm(_SecretForm):
    value = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = Secret
        fields = ("name", "kind", "description")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        creating = self.instance._state.adding
        self.fields["value"].required = creating
        self.fields["value"].help_text = (
            "Stored encrypted and never shown again."
            if creating
            else "Leave blank to keep the current value (it is never shown)."
        )

    def clean(self) -> dict[str, Any]:
        data = cast("dict[str, Any]", super().clean())  # a form's clean() returns cleaned_data
        value = data.get("value")
        if value:
            problem = value_problem(kind=data.get("kind") or self.instance.kind, value=value)
            if problem:
                self.add_error("value", problem)
        return data


@admin.register(Secret)
class SecretAdmin(_SecretAdmin):
    form = SecretForm
    list_display = ("name", "kind", "description", "value_set_at", "rotated_at")
    list_filter = ("kind",)
    search_fields = ("name", "description")

    def get_fields(self, request: HttpRequest, obj: Secret | None = None) -> tuple[str, ...]:
        fields = ("name", "kind", "description", "value")
        return fields if obj is None else (*fields, *TIMESTAMPS)

    def get_readonly_fields(
        self, request: HttpRequest, obj: Secret | None = None
    ) -> tuple[str, ...]:
        # Tools refer to a secret by name, so it is fixed once created.
        return () if obj is None else ("name", *TIMESTAMPS)

    @method_decorator(sensitive_post_parameters("value"))  # kept out of error reports
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Secret, form: Any, change: Any) -> None:
        saved = secret_set(
            name=obj.name,
            value=form.cleaned_data.get("value") or None,
            kind=obj.kind,
            description=obj.description,
            actor=request.user,
        )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Secret) -> None:
        secret_delete(secret=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Secret]) -> None:
        for secret in queryset:
            secret_delete(secret=secret, actor=request.user)


class JSONEditor(forms.Textarea):
    """A monospace textarea whose JSON the admin page checks as it is typed (tool-editor.js
    posts it to `check_url`, which runs the model's own validators)."""

    def __init__(self) -> None:
        super().__init__(attrs={"rows": 14, "class": "vLargeTextField json-editor"})

    def format_value(self, value: Any) -> str:
        if isinstance(value, str):
            text = value
            try:
                value = json.loads(text)
            except ValueError:
                return text  # what the admin typed, invalid, shown back as it was
        return json.dumps(value, indent=2)


class ToolForm(_ToolForm):
    class Meta:
        model = Tool
        fields = (
            *("name", "description", "kind", "enabled", "parameters", "config", "mcp_server"),
            *("risk", "approval", "timeout", "result_limit", "rate_limit", "output_trusted"),
        )
        widgets = {"parameters": JSONEditor(), "config": JSONEditor()}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("parameters", "config"):
            if name in self.fields:  # not when read-only
                check = reverse("admin:tools_tool_check", args=[name])
                self.fields[name].widget.attrs["data-check"] = check
        if "config" in self.fields and "kind" not in self.fields:  # the kind is read-only
            self.fields["config"].widget.attrs["data-kind"] = self.instance.kind


class _EscapingJSONField(forms.JSONField):
    """Shows what was typed back as JSON that a page can hold: Django writes it out with
    ensure_ascii=False, and a surrogate typed as an escape then cannot be encoded."""

    def prepare_value(self, value: Any) -> str:
        text = super().prepare_value(value)
        return text if text_problem(text) is None else json.dumps(value, cls=self.encoder)


class TestCallForm(forms.Form):
    arguments = _EscapingJSONField(
        initial=dict, widget=forms.Textarea(attrs={"rows": 8, "class": "vLargeTextField"})
    )

    def clean_arguments(self) -> Any:
        # A NUL or an unpaired surrogate written as a JSON escape: valid JSON, but no table
        # (the ledger, the audit trail) can keep it, and the page could not show it.
        arguments = self.cleaned_data["arguments"]
        if found := unstorable_at(arguments, "arguments"):
            where, problem = found
            raise forms.ValidationError(f"{where} {problem}.")
        return arguments


@admin.register(Tool)
class ToolAdmin(GovernedAdminMixin, _ToolAdmin):
    form = ToolForm
    list_display = (
        *("name", "kind", "risk", "needs_approval", "enabled", "mcp_exposed", "version"),
        "updated_at",
    )
    list_filter = ("enabled", "mcp_exposed", "kind", "risk")
    search_fields = ("name", "description")
    readonly_fields = ("version", "created_at", "updated_at")
    actions = ("enable", "disable")
    filter_horizontal = ("approver_groups",)
    fieldsets = (
        (None, {"fields": ("name", "description", "kind", "enabled", "mcp_exposed")}),
        ("Contract", {"fields": ("parameters", "config", "mcp_server", "version")}),
        ("Limits", {"fields": ("risk", "approval", "timeout", "result_limit", "rate_limit")}),
        ("Provenance", {"fields": ("output_trusted",)}),
        ("Approvers", {"fields": ("approver_groups",)}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    class Media:
        js = ("tools/tool-editor.js",)

    @admin.display(description="approval", boolean=True)
    def needs_approval(self, obj: Tool) -> bool:
        return obj.requires_approval

    def get_readonly_fields(self, request: HttpRequest, obj: Tool | None = None) -> tuple[str, ...]:
        fields: tuple[str, ...] = self.readonly_fields
        if obj is not None and obj.kind == ToolKind.PYTHON:
            # A Python tool's contract is its code's: the sync refreshes it after a deploy.
            fields = (*fields, "kind", "parameters")
        if obj is not None and obj.kind == ToolKind.MCP:
            fields = (*fields, "kind", "parameters", "mcp_server")  # the server's
        return fields

    @admin.action(description="Enable the selected tools")
    def enable(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable the selected tools")
    def disable(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Tool], enabled: bool) -> None:
        changed = [
            tool_set_enabled(tool=tool, enabled=enabled, actor=request.user)
            for tool in queryset.exclude(enabled=enabled)
        ]
        word = "enabled" if enabled else "disabled"
        messages.success(request, f"{len(changed)} tool(s) {word}.")

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "check/<str:field>/",
                self.admin_site.admin_view(require_POST(self.check_json)),
                name="tools_tool_check",
            ),
            path(
                "<int:pk>/test-call/",
                self.admin_site.admin_view(self.test_call),
                name="tools_tool_test_call",
            ),
            *super().get_urls(),
        ]

    def check_json(self, request: HttpRequest, field: str) -> JsonResponse:
        """The editor's check as you type: {"problem": message or null}."""
        if not self.has_change_permission(request) and not self.has_add_permission(request):
            raise PermissionDenied
        try:
            payload = json.loads(request.body)
            value = json.loads(payload.get("value", ""))
        except (ValueError, AttributeError) as exc:
            return JsonResponse({"problem": f"Not JSON: {exc}"})
        if field == "parameters":
            problem = parameters_problem(value)
        elif field == "config":
            kind = payload.get("kind") or ""
            try:  # absent where read-only (a Python tool's): its configuration ignores them
                parameters = json.loads(payload.get("parameters") or "{}")
            except (ValueError, TypeError):
                parameters = {}
            if parameters_problem(parameters):  # that editor says what is wrong with them
                parameters = {}
            if kind == ToolKind.MCP:
                problem = None  # an MCP tool's configuration comes from its server
            elif kind in ToolKind.values:
                problem = config_problem(kind, value, parameters)
            else:
                problem = "Choose the tool's kind first."
        else:
            return JsonResponse({"problem": "unknown field"}, status=404)
        return JsonResponse({"problem": problem})

    def test_call(self, request: HttpRequest, pk: int) -> TemplateResponse:
        tool = get_object_or_404(Tool, pk=pk)
        if not self.has_change_permission(request, tool):
            raise PermissionDenied
        outcome = None
        form = TestCallForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            outcome = tool_test_call(
                tool=tool, arguments=form.cleaned_data["arguments"], actor=request.user
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": tool,
            "form": form,
            "outcome": outcome,
            "result": None if outcome is None else json.dumps(outcome.result, indent=2),
            "schema": json.dumps(tool.parameters, indent=2),
            "title": f"Test call: {tool}",
            "page_title": "Test call",
        }
        return TemplateResponse(request, "admin/tools/tool/test_call.html", context)


@admin.register(MCPServer)
class MCPServerAdmin(_MCPServerAdmin):
    list_display = ("name", "transport", "tool_count", "synced_at", "status")
    list_filter = ("transport",)
    search_fields = ("name", "command", "url")
    readonly_fields = ("synced_at", "status")
    actions = ("sync",)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = (
        (None, {"fields": ("name", "transport")}),
        ("stdio", {"fields": ("command", "arguments", "environment")}),
        ("Streamable HTTP", {"fields": ("url", "auth_secret", "allow_networks")}),
        ("Sync", {"fields": ("synced_at", "status")}),
    )

    @admin.display(description="tools")
    def tool_count(self, obj: MCPServer) -> int:
        return obj.tools.count()

    @admin.action(description="Sync tools from the selected servers")
    def sync(self, request: HttpRequest, queryset: QuerySet[MCPServer]) -> None:
        for server in queryset:
            self._sync(request, server)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:pk>/sync/",
                self.admin_site.admin_view(require_POST(self.sync_one)),
                name="tools_mcpserver_sync",
            ),
            *super().get_urls(),
        ]

    def sync_one(self, request: HttpRequest, pk: int) -> HttpResponse:
        server = get_object_or_404(MCPServer, pk=pk)
        if not self.has_change_permission(request, server):
            raise PermissionDenied
        self._sync(request, server)
        return redirect(reverse("admin:tools_mcpserver_change", args=[server.pk]))

    def _sync(self, request: HttpRequest, server: MCPServer) -> None:
        try:
            report = mcp_server_sync(server=server, actor=request.user)
        except MCPUnavailable as error:
            messages.error(request, f"{server}: {error}")
            return
        messages.success(request, f"{server}: {report}.")
