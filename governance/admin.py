"""Governance in the admin: the Access pages (governance.access_admin) on governed objects,
users and groups; the denials, approvals and escalations."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import URLPattern, path
from django.utils import timezone

from audit.admin import ReadOnlyAdmin
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

# ModelAdmin and ModelForm are generic in django-stubs only; at run time they take no parameter.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]
    _BudgetModelForm = forms.ModelForm[Budget]

    from django.contrib.auth.models import User
else:
    _ModelAdmin = admin.ModelAdmin
    _BudgetModelForm = forms.ModelForm


def personal_field(name: str) -> Callable[[Any, Model], str]:
    """A read-only admin field showing `name` (a run's text, a tool call's arguments, a held
    answer) as the console shows what is in a run: personal data as the audit trail keeps it,
    a keyed hash (pii.as_seen_by, no viewer: the console is never the run's owner's view)."""

    @admin.display(description=name.replace("_", " "))
    def show(self: Any, obj: Model) -> str:
        value = as_seen_by(getattr(obj, name), viewer_id=None, owner_id=None)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return show


def _masked_fields(model: type[Model], personal: tuple[str, ...]) -> tuple[str, ...]:
    """The model's fields, personal ones masked; a run, agent or tool by its id (the object may
    be gone: governance.models)."""
    return tuple(
        f"{f.name}_masked"
        if f.name in personal
        else f.attname
        if f.name in ("run", "agent", "tool")
        else f.name
        for f in model._meta.fields
    )


@admin.register(AccessDenial)
class AccessDenialAdmin(_ModelAdmin):
    """Every denial in one list; they are set on each object's Access page."""

    list_display = ("content_type", "object_id", "target", "action", "user", "group", "created_at")
    list_filter = ("content_type", "action")
    readonly_fields = [f.name for f in AccessDenial._meta.fields]

    def get_urls(self) -> list[URLPattern]:
        holders = path(
            "holders/",
            self.admin_site.admin_view(holders_view),
            name="governance_accessdenial_holders",
        )
        return [holders, *super().get_urls()]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: AccessDenial) -> None:
        if obj.target is None:  # its object was deleted: nothing left to deny
            obj.delete()
            return
        access_undeny(
            obj=obj.target,
            holder=cast("User | Group", obj.user or obj.group),  # a denial names one of them
            action=obj.action,
            actor=request.user,
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AccessDenial]) -> None:
        for denial in queryset:
            self.delete_model(request, denial)


_Decide = Callable[[Any], object]  # decides one ApprovalRequest or Escalation


class _Decisions(ReadOnlyAdmin):
    """Reviewers decide here, by the actions, until the inbox (the same services) is theirs."""

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Any], decide: _Decide, done: str
    ) -> None:
        decided = 0
        for item in queryset:
            try:
                decide(item)
                decided += 1
            except ApprovalError as exc:
                self.message_user(request, f"{item}: {exc}", messages.ERROR)
        if decided:
            self.message_user(request, f"{decided} {done}.", messages.SUCCESS)


def _decision_action(
    name: str, description: str, decide: Callable[[Any, Any], object], done: str
) -> Callable[[_Decisions, HttpRequest, QuerySet[Any]], None]:
    """An admin action that decides each selected pending item with `decide(item, user)`."""

    def action(self: _Decisions, request: HttpRequest, queryset: QuerySet[Any]) -> None:
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApprovalRequest]:
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


class BudgetForm(_BudgetModelForm):
    class Meta:
        model = Budget
        fields = (
            "name",
            "user",
            "group",
            "agent",
            "period",
            "max_tokens",
            "max_cost",
            "hard",
            "notify_at_percent",
            "enabled",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        agent = cast("forms.ModelChoiceField[Any]", self.fields["agent"])
        agent.queryset = cast("QuerySet[Any]", agent.queryset).order_by("name")  # a foreign key's
        # This one field's labels: mypy reads an instance attribute over a method as a new method.
        agent.label_from_instance = lambda a: a.name  # type: ignore[method-assign,assignment]

    def clean(self) -> dict[str, Any]:
        data = cast("dict[str, Any]", super().clean())  # ModelForm's is the cleaned_data
        subjects = [data.get("user"), data.get("group"), data.get("agent")]
        if sum(subject is not None for subject in subjects) != 1:
            raise forms.ValidationError("A budget limits exactly one user, one team or one agent.")
        if data.get("max_tokens") is None and data.get("max_cost") is None:
            raise forms.ValidationError("Give a token limit, a cost limit, or both.")
        return data


@admin.register(Budget)
class BudgetAdmin(_ModelAdmin):
    form = BudgetForm
    list_display = ("name", "subject", "period", "limits", "used", "hard", "enabled")
    list_filter = ("period", "hard", "enabled")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Budget]:
        return super().get_queryset(request).select_related("user", "group")

    @admin.display(description="for")
    def subject(self, obj: Budget) -> str:
        if obj.user_id:
            return f"user {obj.user}"
        if obj.group_id:
            return f"team {obj.group}"
        agent = apps.get_model("agents", "Agent").objects.filter(pk=obj.agent_id).first()
        return f"agent {agent or obj.agent_id}"

    @admin.display(description="limit")
    def limits(self, obj: Budget) -> str:
        parts = [f"{obj.max_tokens:,} tokens"] if obj.max_tokens is not None else []
        parts += [f"${obj.max_cost}"] if obj.max_cost is not None else []
        return " and ".join(parts)

    @admin.display(description="used this period")
    def used(self, obj: Budget) -> str:
        from governance.budgets import period_start

        usages = obj.usage.filter(period_start=period_start(obj.period, timezone.localdate()))
        usage = usages.first()
        if usage is None:
            return "nothing yet"
        return f"{usage.used_tokens:,} tokens, ${usage.used_cost:.4f}"


@admin.register(TeamPolicy)
class TeamPolicyAdmin(_ModelAdmin):
    list_display = ("group", "allowed_regions")


def _with_access_page(model: type[Model]) -> None:
    """Re-register `model`'s admin (Django's, or whoever customised it) with the Access page."""
    current = type(admin.site.get_model_admin(model))
    admin.site.unregister(model)
    extra: dict[str, object] = {"__module__": __name__}
    if current.change_form_template is None:  # else that template must link to the page
        extra["change_form_template"] = "admin/warden/holder_change_form.html"
    admin.site.register(model, type(current.__name__, (HolderAccessMixin, current), extra))


_with_access_page(get_user_model())
_with_access_page(Group)
