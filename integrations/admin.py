"""Webhooks in the admin: configured per OAuth2 application through the audited services, the
signing secret shown once (on the page that follows its creation or rotation, never stored in
a message or a cookie), and a read-only delivery log with every attempt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST
from oauth2_provider.models import get_application_model

from audit.admin import ReadOnlyAdmin
from integrations.models import (
    ApplicationScopes,
    MCPClientAccess,
    MCPSession,
    PersonalAccessToken,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from integrations.tokens import oauth_application_tokens_revoke, token_revoke
from integrations.webhooks import (
    webhook_application_problem,
    webhook_create,
    webhook_delete,
    webhook_secret_problem,
    webhook_secret_rotate,
    webhook_update,
    webhook_url_problem,
)


class WebhookForm(forms.ModelForm):
    url = forms.URLField(
        label="URL",
        max_length=2000,
        assume_scheme="https",
        help_text=Webhook._meta.get_field("url").help_text,
    )
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=WebhookEvent.values,
    )
    secret = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave blank and Warden generates one. Either way it is shown once, on the "
        "next page, and stored encrypted.",
    )

    class Meta:
        model = Webhook
        fields = ("application", "url", "events", "active", "description")

    def clean_application(self):
        application = self.cleaned_data["application"]
        problem = webhook_application_problem(application)
        if problem:
            raise forms.ValidationError(problem)
        return application

    def clean_url(self):
        url = self.cleaned_data["url"]
        problem = webhook_url_problem(url)
        if problem:
            raise forms.ValidationError(problem)
        return url

    def clean_secret(self):
        secret = self.cleaned_data.get("secret") or ""
        problem = secret and webhook_secret_problem(secret)
        if problem:
            raise forms.ValidationError(problem)
        return secret or None


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ("number", "started_at", "duration_ms", "status_code", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ("application", "url", "event_list", "active", "secret_set_at", "log")
    list_filter = ("active", "application")
    search_fields = ("url", "description", "application__name")
    readonly_fields = ("secret_set_at", "created_at", "updated_at", "log")

    def get_fields(self, request, obj=None):
        fields = ("application", "url", "events", "active", "description")
        if obj is None:
            return (*fields, "secret")
        return (*fields, "secret_set_at", "created_at", "updated_at", "log")

    def get_readonly_fields(self, request, obj=None):
        # The secret belongs to its application: a webhook does not move to another one.
        return self.readonly_fields if obj is None else ("application", *self.readonly_fields)

    @admin.display(description="events")
    def event_list(self, obj) -> str:
        return ", ".join(obj.events)

    @admin.display(description="delivery log")
    def log(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "-"
        url = reverse("admin:portal_webhookdelivery_changelist")
        return format_html('<a href="{}?webhook__id__exact={}">Deliveries</a>', url, obj.pk)

    @method_decorator(sensitive_post_parameters("secret"))  # kept out of error reports
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            saved = webhook_update(
                webhook=obj,
                actor=request.user,
                url=data["url"],
                events=data["events"],
                active=data["active"],
                description=data["description"],
            )
        else:
            saved, obj.new_secret = webhook_create(
                application=data["application"],
                url=data["url"],
                events=data["events"],
                active=data["active"],
                description=data["description"],
                secret=data.get("secret"),
                actor=request.user,
            )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        webhook_delete(webhook=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for webhook in queryset:
            webhook_delete(webhook=webhook, actor=request.user)

    def response_add(self, request, obj, post_url_continue=None):
        return self._secret_page(request, obj, obj.new_secret, created=True)

    def get_urls(self):
        return [
            path(
                "<int:pk>/rotate-secret/",
                self.admin_site.admin_view(require_POST(self.rotate_secret)),
                name="portal_webhook_rotate_secret",
            ),
            *super().get_urls(),
        ]

    def rotate_secret(self, request, pk: int):
        webhook = get_object_or_404(Webhook, pk=pk)
        if not self.has_change_permission(request, webhook):
            raise PermissionDenied
        secret = webhook_secret_rotate(webhook=webhook, actor=request.user)
        return self._secret_page(request, webhook, secret, created=False)

    def _secret_page(self, request, webhook: Webhook, secret: str, *, created: bool):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": webhook,
            "secret": secret,
            "created": created,
            "title": "Signing secret",
            "page_title": "Signing secret",
        }
        response = TemplateResponse(request, "admin/portal/webhook/secret.html", context)
        add_never_cache_headers(response)  # no copy kept by any cache
        return response


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """The delivery log: read-only, newest first."""

    list_display = (
        "created_at",
        "event",
        "webhook",
        "run_id",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("status", "event", "webhook__application", "webhook")
    list_select_related = ("webhook__application",)
    date_hierarchy = "created_at"
    fields = (
        "id",
        "webhook",
        "event",
        "run_id",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
        "body",
    )
    readonly_fields = fields
    inlines = (AttemptInline,)


@admin.register(PersonalAccessToken)
class PersonalAccessTokenAdmin(admin.ModelAdmin):
    """Users' API tokens, for governance: who holds which scopes until when, and a way to
    revoke one. Tokens are made by their users (/account/tokens/); the secret is nowhere."""

    list_display = ["name", "user", "prefix", "scopes", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = [f.name for f in PersonalAccessToken._meta.fields if f.name != "digest"]
    exclude = ["digest"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # read-only; revoking is the action below, audited

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a token is revoked (audited), never deleted out of sight

    def has_revoke_permission(self, request) -> bool:
        return request.user.has_perm("portal.delete_personalaccesstoken")

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset) -> None:
        for token in queryset.filter(revoked_at__isnull=True):
            token_revoke(token=token, actor=request.user)
        self.message_user(request, "Revoked.")


class ApplicationScopesForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=list(settings.OAUTH2_PROVIDER["SCOPES"].items()),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )

    class Meta:
        model = ApplicationScopes
        fields = ["scopes"]


class ApplicationScopesInline(admin.StackedInline):
    model = ApplicationScopes
    form = ApplicationScopesForm
    can_delete = False
    verbose_name_plural = "Allowed scopes (a token of this application may carry no others)"


class MCPClientAccessInline(admin.StackedInline):
    model = MCPClientAccess
    can_delete = True
    filter_horizontal = ("tools", "agents")
    verbose_name_plural = (
        "MCP allowlist (if set, this application's tokens reach over MCP only the tools and "
        "agents listed, of those exposed that its account may use)"
    )


class OpenNow(admin.SimpleListFilter):
    title = "open"
    parameter_name = "open"

    def lookups(self, request, model_admin):
        return [("yes", "Open now"), ("no", "Closed or idle")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(MCPSession.OPEN())
        if self.value() == "no":
            return queryset.exclude(MCPSession.OPEN())
        return queryset


@admin.register(MCPSession)
class MCPSessionAdmin(ReadOnlyAdmin):
    """The MCP clients seen at /mcp: which person or application, through which client, since
    when and how often; open while seen within WARDEN_MCP_SESSION_IDLE_SECONDS."""

    list_display = ["client", "user", "application", "opened_at", "last_seen_at", "calls", "open"]
    list_filter = [OpenNow, "application"]
    search_fields = ["client", "user__username"]
    fields = readonly_fields = (
        *("client", "user", "application", "personal_token", "protocol_version"),
        *("opened_at", "last_seen_at", "closed_at", "calls"),
    )

    @admin.display(boolean=True)
    def open(self, obj: MCPSession) -> bool:
        return obj.is_open


# DOT's own application admin, with the scopes each application may ask for.
if TYPE_CHECKING:  # a base class mypy can see; at run time, the one registered
    _application_admin = admin.ModelAdmin
else:
    _application_admin = type(admin.site.get_model_admin(get_application_model()))
admin.site.unregister(get_application_model())


@admin.register(get_application_model())
class ApplicationAdmin(_application_admin):
    inlines = [
        *getattr(_application_admin, "inlines", []),
        ApplicationScopesInline,
        MCPClientAccessInline,
    ]
    actions = [*(getattr(_application_admin, "actions", None) or []), "revoke_tokens"]

    def has_revoke_permission(self, request) -> bool:
        return request.user.has_perm("oauth2_provider.change_application")

    @admin.action(
        description="Revoke every token of the selected applications", permissions=["revoke"]
    )
    def revoke_tokens(self, request, queryset) -> None:
        # For when an application's secret leaked or its owner left: it keeps its
        # registration, and may be given new tokens.
        for application in queryset:
            oauth_application_tokens_revoke(application=application, actor=request.user)
        self.message_user(request, "Revoked every token of the selected applications.")


# Lockouts in the admin (their admin lives beside their code), and DOT's tokens, revoked
# through audited services.
from integrations import lockout_admin, oauth_admin  # noqa: E402, F401
