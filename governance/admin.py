"""Governance in the admin: per-object grants and denials (guardian's object-permission pages,
narrowed to the one governed action and a deny), the denials, approvals and escalations."""

from __future__ import annotations

import json

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone
from guardian.admin import (
    AdminGroupObjectPermissionsForm,
    AdminUserObjectPermissionsForm,
    GuardedModelAdminMixin,
)
from guardian.shortcuts import (
    get_group_perms,
    get_groups_with_perms,
    get_user_perms,
    get_users_with_perms,
)

from audit.pii import as_seen_by
from governance.access import codename
from governance.approvals import ApprovalError, approval_decide, escalation_decide
from governance.models import (
    AccessDenial,
    ApprovalRequest,
    Budget,
    Escalation,
    TeamPolicy,
)
from governance.services import access_deny, access_grant, access_revoke, access_undeny

GRANT, DENY = "grant", "deny"


def personal_field(name: str):
    """A read-only admin field showing `name` (a run's text, a tool call's arguments, a held
    answer) as the console shows what is in a run: personal data as the audit trail keeps it,
    a keyed hash (pii.as_seen_by, no viewer: the console is never the run's owner's view)."""

    def show(self, obj):
        value = as_seen_by(getattr(obj, name), viewer_id=None, owner_id=None)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    show.short_description = name.replace("_", " ")
    return show


def _masked_fields(model, personal: tuple[str, ...]) -> list[str]:
    return [f"{f.name}_masked" if f.name in personal else f.name for f in model._meta.fields]


def _governed_form(base, *, action: str, actor):
    """guardian's form for one user or group, offering the governed action and a deny; every
    change goes through the audited services."""

    class GovernedForm(base):
        def holder(self):
            return getattr(self, "user", None) or self.group

        def get_obj_perms_field_label(self) -> str:
            return "Access"

        def get_obj_perms_field_choices(self) -> list:
            return [
                (GRANT, f"May {action} it"),
                (DENY, f"Denied: may not {action} it, whatever any grant says"),
            ]

        def get_obj_perms_field_initial(self) -> list:
            holder = self.holder()
            held = get_user_perms if holder is getattr(self, "user", None) else get_group_perms
            code = codename(type(self.obj), action)
            initial = [GRANT] if held(holder, self.obj).filter(codename=code).exists() else []
            field = "user" if holder is getattr(self, "user", None) else "group"
            denied = AccessDenial.objects.filter(
                content_type=ContentType.objects.get_for_model(self.obj),
                object_id=self.obj.pk,
                action=action,
                **{field: holder},
            ).exists()
            return initial + ([DENY] if denied else [])

        def save_obj_perms(self) -> None:
            wanted = set(self.cleaned_data[self.get_obj_perms_field_name()])
            had = set(self.get_obj_perms_field_initial())
            change = {"obj": self.obj, "holder": self.holder(), "action": action, "actor": actor}
            for choice, add, remove in [
                (GRANT, access_grant, access_revoke),
                (DENY, access_deny, access_undeny),
            ]:
                if choice in wanted - had:
                    add(**change)
                elif choice in had - wanted:
                    remove(**change)

    return GovernedForm


class GovernedAdminMixin(GuardedModelAdminMixin):
    """Adds the "Access" page (guardian's object permissions) to a governed model's admin:
    grant or deny one user or group the model's action."""

    governed_action = "use"
    change_form_template = None  # the app's own change form, which links to the page
    obj_perms_manage_template = "admin/warden/obj_perms_manage.html"

    def get_obj_perms_manage_user_form(self, request):
        return _governed_form(
            AdminUserObjectPermissionsForm, action=self.governed_action, actor=request.user
        )

    def get_obj_perms_manage_group_form(self, request):
        return _governed_form(
            AdminGroupObjectPermissionsForm, action=self.governed_action, actor=request.user
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        if obj is not None and self.has_change_permission(request, obj):  # as the Access page
            extra_context = {**(extra_context or {}), "access": _holders(obj, self)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_obj_perms_base_context(self, request, obj):
        context = super().get_obj_perms_base_context(request, obj)
        context["model_perms"] = context["model_perms"].filter(
            codename=codename(type(obj), self.governed_action)
        )
        context["governed_action"] = self.governed_action
        context["title"] = "Access"
        context["denials"] = AccessDenial.objects.filter(
            content_type=ContentType.objects.get_for_model(obj), object_id=obj.pk
        ).select_related("user", "group")
        return context


def _holders(obj, admin_: GovernedAdminMixin) -> dict:
    """Who holds the object's governed action (granted on the object itself) and who is
    denied it: the summary on the object's change page; the Access page changes it."""
    wanted = codename(type(obj), admin_.governed_action)
    groups = get_groups_with_perms(obj, attach_perms=True)
    users = get_users_with_perms(obj, attach_perms=True, with_group_users=False)
    denials = AccessDenial.objects.filter(
        content_type=ContentType.objects.get_for_model(obj), object_id=obj.pk
    ).select_related("user", "group")
    return {
        "action": admin_.governed_action,
        "groups": sorted(g.name for g, perms in groups.items() if wanted in perms),
        "users": sorted(u.get_username() for u, perms in users.items() if wanted in perms),
        "denied": sorted(str(d.user or d.group) for d in denials),
    }


@admin.register(AccessDenial)
class AccessDenialAdmin(admin.ModelAdmin):
    """Every denial in one list; they are set on each object's Access page."""

    list_display = ("content_type", "object_id", "target", "action", "user", "group", "created_at")
    list_filter = ("content_type", "action")
    readonly_fields = [f.name for f in AccessDenial._meta.fields]

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
