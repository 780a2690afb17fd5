"""Governance in the admin: the Access pages (governance.access_admin) on governed objects,
users and groups; the denials, approvals and escalations."""

from __future__ import annotations

import json

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import path
from django.utils import timezone

from audit.pii import as_seen_by
from governance.access_admin import HolderAccessMixin, holders_view
from governance.approvals import ApprovalError, approval_decide, escalation_decide
from governance.models import (
    AccessDenial,
    ApprovalRequest,
    Budget,
    Escalation,
    TeamPolicy,
)
from governance.services import access_undeny


def personal_field(name: str):
    """A read-only admin field showing `name` (a run's text, a tool call's arguments, a held
    answer) as the console shows what is in a run: personal data as the audit trail keeps it,
    a keyed hash (pii.as_seen_by, no viewer: the console is never the run's owner's view)."""

    @admin.display(description=name.replace("_", " "))
    def show(self, obj):
        value = as_seen_by(getattr(obj, name), viewer_id=None, owner_id=None)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return show


def _masked_fields(model, personal: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{f.name}_masked" if f.name in personal else f.name for f in model._meta.fields)


@admin.register(AccessDenial)
class AccessDenialAdmin(admin.ModelAdmin):
    """Every denial in one list; they are set on each object's Access page."""

    list_display = ("content_type", "object_id", "target", "action", "user", "group", "created_at")
    list_filter = ("content_type", "action")
    readonly_fields = [f.name for f in AccessDenial._meta.fields]

    def get_urls(self):
        holders = path(
            "holders/",
            self.admin_site.admin_view(holders_view),
            name="governance_accessdenial_holders",
        )
        return [holders, *super().get_urls()]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_model(self, request, obj) -> None:
        if obj.target is None:  # its object was deleted: nothing left to deny
            obj.delete()
            return
        access_undeny(
            obj=obj.target, holder=obj.user or obj.group, action=obj.action, actor=request.user
        )

    def delete_queryset(self, request, queryset) -> None:
        for denial in queryset:
            self.delete_model(request, denial)


class _Decisions(admin.ModelAdmin):
    """Reviewers decide here until the inbox (the same services) is theirs."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def _each(self, request, queryset, decide, done: str) -> None:
        decided = 0
        for item in queryset:
            try:
                decide(item)
                decided += 1
            except ApprovalError as exc:
                self.message_user(request, f"{item}: {exc}", messages.ERROR)
        if decided:
            self.message_user(request, f"{decided} {done}.", messages.SUCCESS)


def _decision_action(name: str, description: str, decide, done: str):
    """An admin action that decides each selected pending item with `decide(item, user)`."""

    def action(self, request, queryset):
        self._each(
            request,
            queryset.filter(status="pending"),
            lambda item: decide(item, request.user),
            done,
        )

    action.__name__ = name
    return admin.action(description=description)(action)


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(_Decisions):
    list_display = ("id", "tool_name", "run_id", "requested_by", "status", "created_at")
    list_filter = ("status", "tool_name")
    fields = readonly_fields = _masked_fields(ApprovalRequest, ("arguments", "approved_arguments"))
    arguments_masked = personal_field("arguments")
    approved_arguments_masked = personal_field("approved_arguments")
    actions = ["approve", "reject"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("requested_by", "decided_by")

    approve = _decision_action(
        "approve",
        "Approve the selected calls as requested",
        lambda item, user: approval_decide(approval_id=item.pk, decided_by=user, approve=True),
        "approved",
    )
    reject = _decision_action(
        "reject",
        "Reject the selected calls",
        lambda item, user: approval_decide(approval_id=item.pk, decided_by=user, approve=False),
        "rejected",
    )


@admin.register(Escalation)
class EscalationAdmin(_Decisions):
    list_display = ("id", "run_id", "requested_by", "confidence", "threshold", "status")
    list_filter = ("status",)
    fields = readonly_fields = _masked_fields(
        Escalation, ("question", "answer", "citations", "released_answer")
    )
    question_masked = personal_field("question")
    answer_masked = personal_field("answer")
    citations_masked = personal_field("citations")
    released_answer_masked = personal_field("released_answer")
    actions = ["release", "reject"]

    release = _decision_action(
        "release",
        "Release the selected answers as they are",
        lambda item, user: escalation_decide(escalation_id=item.pk, decided_by=user, release=True),
        "released",
    )
    reject = _decision_action(
        "reject",
        "Reject the selected answers",
        lambda item, user: escalation_decide(escalation_id=item.pk, decided_by=user, release=False),
        "rejected",
    )


class BudgetForm(forms.ModelForm):
    agent_id = forms.TypedChoiceField(
        label="Agent", required=False, coerce=int, empty_value=None, choices=()
    )

    class Meta:
        model = Budget
        fields = (
            "name",
            "user",
            "group",
            "agent_id",
            "period",
            "max_tokens",
            "max_cost",
            "hard",
            "notify_at_percent",
            "enabled",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        agents = apps.get_model("agents", "Agent").objects.order_by("name")
        self.fields["agent_id"].choices = [("", "---------")] + [(a.pk, a.name) for a in agents]

    def clean(self):
        data = super().clean()
        subjects = [data.get("user"), data.get("group"), data.get("agent_id")]
        if sum(subject is not None for subject in subjects) != 1:
            raise forms.ValidationError("A budget limits exactly one user, one team or one agent.")
        if data.get("max_tokens") is None and data.get("max_cost") is None:
            raise forms.ValidationError("Give a token limit, a cost limit, or both.")
        return data


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetForm
    list_display = ("name", "subject", "period", "limits", "used", "hard", "enabled")
    list_filter = ("period", "hard", "enabled")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user", "group")

    @admin.display(description="for")
    def subject(self, obj) -> str:
        if obj.user_id:
            return f"user {obj.user}"
        if obj.group_id:
            return f"team {obj.group}"
        agent = apps.get_model("agents", "Agent").objects.filter(pk=obj.agent_id).first()
        return f"agent {agent or obj.agent_id}"

    @admin.display(description="limit")
    def limits(self, obj) -> str:
        parts = [f"{obj.max_tokens:,} tokens"] if obj.max_tokens is not None else []
        parts += [f"${obj.max_cost}"] if obj.max_cost is not None else []
        return " and ".join(parts)

    @admin.display(description="used this period")
    def used(self, obj) -> str:
        from governance.budgets import period_start

        usage = obj.usage.filter(period_start=period_start(obj.period, timezone.localdate()))
        usage = usage.first()
        if usage is None:
            return "nothing yet"
        return f"{usage.used_tokens:,} tokens, ${usage.used_cost:.4f}"


@admin.register(TeamPolicy)
class TeamPolicyAdmin(admin.ModelAdmin):
    list_display = ("group", "allowed_regions")


def _with_access_page(model) -> None:
    """Re-register `model`'s admin (Django's, or whoever customised it) with the Access page."""
    current = type(admin.site.get_model_admin(model))
    admin.site.unregister(model)
    extra = {"__module__": __name__}
    if current.change_form_template is None:  # else that template must link to the page
        extra["change_form_template"] = "admin/warden/holder_change_form.html"
    admin.site.register(model, type(current.__name__, (HolderAccessMixin, current), extra))


_with_access_page(get_user_model())
_with_access_page(Group)
