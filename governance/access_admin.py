"""The Access pages of the admin console.

- On each governed object (agent, tool, model route, knowledge base): who may use it now and
  why, denials first; grant or deny a user, group or team picked with search; a preview of who
  gains or loses access before anything is saved, and a confirmation when the change would
  leave a whole group or team, or everyone, without it. Each change goes through the audited
  services (governance.services), under a lock on the object, and only if nothing changed
  since the preview that was confirmed.
- On each user and group: everything they may use and why (`holder_access_view`).
- `holders_view`: the pickers' search, users and groups as select2 reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.apps import apps
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Model, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse, QueryDict
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.text import capfirst

from governance import audience
from governance.audience import DENY, GRANT, REVOKE, UNDENY, kind_of
from governance.services import access_deny, access_grant, access_revoke, access_undeny

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin
    from django.contrib.auth.models import User

    # The mixins below go before admin.ModelAdmin in a model admin's bases: to mypy they are one.
    _ModelAdmin = ModelAdmin[Any]
else:
    _ModelAdmin = object

APPLY = {GRANT: access_grant, REVOKE: access_revoke, DENY: access_deny, UNDENY: access_undeny}
PEOPLE_SHOWN = 300  # rows of the people table; the search narrows the rest
PICKER_RESULTS = 20  # of each kind per search


def _access_url(
    model_admin: ModelAdmin[Any], view: Callable[[HttpRequest, str], HttpResponse]
) -> URLPattern:
    """`<pk>/access/`, named `<app>_<model>_access`, before the admin's catch-all routes."""
    opts = model_admin.opts
    return path(
        "<path:object_id>/access/",
        model_admin.admin_site.admin_view(view),
        name=f"{opts.app_label}_{opts.model_name}_access",
    )


def holder_of(token: str) -> User | Group | None:
    """The user or group a picker's value names ("user:7", "group:3"), or None."""
    kind, _, pk = (token or "").partition(":")
    if not pk.isdigit():
        return None
    if kind == "user":
        return get_user_model().objects.filter(pk=pk).first()
    if kind == "group":
        return Group.objects.filter(pk=pk).first()
    return None


def describe(holder: User | Group) -> str:
    if isinstance(holder, Group):
        return f"{kind_of(holder)} {holder.name}"
    return f"user {holder.get_username()}"


class ChangeForm(forms.Form):
    holder = forms.CharField(label="Who", error_messages={"required": "Pick a user or group."})
    operation = forms.ChoiceField(
        label="Change",
        choices=[
            (GRANT, "Grant"),
            (DENY, "Deny"),
            (REVOKE, "Revoke the grant"),
            (UNDENY, "Lift the denial"),
        ],
        initial=GRANT,
        widget=forms.RadioSelect,
    )
    fingerprint = forms.CharField(required=False, widget=forms.HiddenInput)
    confirm = forms.BooleanField(required=False, label="I understand")

    def clean_holder(self) -> User | Group:
        holder = holder_of(self.cleaned_data["holder"])
        if holder is None:
            raise forms.ValidationError("No such user or group: pick one from the list.")
        return holder


def _pointless(access: audience.Access, operation: str, holder: User | Group) -> str | None:
    """Why `operation` would change nothing, or None."""
    token = audience.token_of(holder)
    granted = any(h.token == token and not h.every for h in access.grants)
    denied = any(h.token == token for h in access.denials)
    if operation == GRANT and granted:
        return f"The {describe(holder)} already has a grant on it."
    if operation == REVOKE and not granted:
        return f"The {describe(holder)} has no grant on it to revoke."
    if operation == DENY and denied:
        return f"The {describe(holder)} is already denied."
    if operation == UNDENY and not denied:
        return f"The {describe(holder)} is not denied."
    return None


class GovernedAdminMixin(_ModelAdmin):
    """Adds the Access page to a governed model's admin (`governed_action`: use or read)."""

    governed_action = "use"

    def get_urls(self) -> list[URLPattern]:
        return [_access_url(self, self.access_view), *super().get_urls()]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and self.has_change_permission(request, obj):  # as the Access page
            access = audience.explain(obj, self.governed_action)
            extra_context = {**(extra_context or {}), "access": _summary(access, self)}
        return super().change_view(request, object_id, form_url, extra_context)

    def access_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:  # missing, or hidden from this admin (a denial): as for the change page
            # Django's own answer for a missing object: a private method django-stubs omits.
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined,no-any-return]
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        action = self.governed_action
        form = ChangeForm(request.POST or None, initial={"operation": GRANT})
        seen: audience.Preview | None = None
        if request.method == "POST" and form.is_valid():
            operation, holder = form.cleaned_data["operation"], form.cleaned_data["holder"]
            with transaction.atomic():
                # One change to an object's access at a time: the preview confirmed is the
                # state the change is made on.
                type(obj)._default_manager.select_for_update().filter(pk=obj.pk).exists()
                current = audience.explain(obj, action)
                problem = _pointless(current, operation, holder)
                if problem:
                    form.add_error("holder", problem)
                else:
                    seen = audience.preview(obj, action, operation, holder, before=current)
                    if "apply" in request.POST:
                        done = self._apply(request, form, obj, seen, operation, holder)
                        if done:
                            return HttpResponseRedirect(request.path)
        access = seen.before if seen else audience.explain(obj, action)
        query = request.GET.get("q", "").strip()
        people = [
            p
            for p in access.people
            if not query or query.lower() in f"{p.username} {p.name}".lower()
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "title": f"Access to {obj}",
            "page_title": "Access",
            "action": action,
            "access": access,
            "people": people[:PEOPLE_SHOWN],
            "people_hidden": max(0, len(people) - PEOPLE_SHOWN),
            "allowed_count": len(access.allowed),
            "query": query,
            "form": form,
            "preview": seen,
            "holder_name": describe(form.cleaned_data["holder"]) if seen else "",
            "holders_url": reverse("admin:governance_accessdenial_holders"),
        }
        return TemplateResponse(request, "admin/warden/access.html", context)

    def _apply(
        self,
        request: HttpRequest,
        form: ChangeForm,
        obj: Model,
        seen: audience.Preview,
        operation: str,
        holder: User | Group,
    ) -> bool:
        """Make the previewed change if it was confirmed against this very state."""
        if form.cleaned_data["fingerprint"] != seen.before.fingerprint():
            form.data = data = cast(QueryDict, form.data).copy()  # the POST it was bound to
            data["fingerprint"] = seen.before.fingerprint()
            messages.warning(
                request, "Access changed since this preview was made: check it again, then apply."
            )
            return False
        if seen.needs_confirmation and not form.cleaned_data["confirm"]:
            form.add_error("confirm", "Confirm that you mean to lock them out.")
            return False
        APPLY[operation](obj=obj, holder=holder, action=self.governed_action, actor=request.user)
        verb = {GRANT: "granted", REVOKE: "revoked", DENY: "denied", UNDENY: "lifted"}[operation]
        messages.success(
            request,
            f"{capfirst(describe(holder))}: {verb}. "
            f"{len(seen.gained)} gained access, {len(seen.lost)} lost it.",
        )
        return True


def _summary(access: audience.Access, admin_: GovernedAdminMixin) -> dict[str, object]:
    """Who holds the object's governed action by a grant on it, and who is denied: the line
    on the object's change page."""
    return {
        "action": admin_.governed_action,
        "groups": sorted(h.name for h in access.grants if h.kind != "user" and not h.every),
        "users": sorted(h.name for h in access.grants if h.kind == "user" and not h.every),
        "denied": sorted(h.name for h in access.denials),
        "count": len(access.allowed),
    }


def holders_view(request: HttpRequest) -> JsonResponse:
    """The pickers' search: `?term=` over usernames, names and e-mail addresses, and group
    names, in select2's JSON; only what this admin may view."""
    term = request.GET.get("term", "").strip()
    results: list[dict[str, object]] = []
    if request.user.has_perm("auth.view_user"):
        users = get_user_model().objects.filter(is_active=True).order_by("username")
        if term:
            users = users.filter(
                Q(username__icontains=term)
                | Q(first_name__icontains=term)
                | Q(last_name__icontains=term)
                | Q(email__icontains=term)
            )
        children = [
            {"id": f"user:{u.pk}", "text": f"{u.get_username()} ({u.get_full_name() or 'user'})"}
            for u in users[:PICKER_RESULTS]
        ]
        if children:
            results.append({"text": "Users", "children": children})
    if request.user.has_perm("auth.view_group"):
        groups = Group.objects.order_by("name")
        if term:
            groups = groups.filter(name__icontains=term)
        found = list(groups[: PICKER_RESULTS * 2])
        for label, kind in (("Teams", "team"), ("Groups", "role")):
            children = [
                {"id": f"group:{g.pk}", "text": f"{g.name} ({kind_of(g)})"}
                for g in found
                if kind_of(g) == kind
            ]
            if children:
                results.append({"text": label, "children": children})
    return JsonResponse({"results": results, "pagination": {"more": False}})


GOVERNED = (
    ("agents.Agent", "use"),
    ("tools.Tool", "use"),
    ("agents.ModelRoute", "use"),
    ("agents.KnowledgeBase", "read"),
)


class HolderAccessMixin(_ModelAdmin):
    """Adds "Access" to the user and group admins: everything they may use, and why."""

    def get_urls(self) -> list[URLPattern]:
        return [_access_url(self, self.holder_access_view), *super().get_urls()]

    def holder_access_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        holder = self.get_object(request, unquote(object_id))
        if holder is None:
            # Django's own answer for a missing object: a private method django-stubs omits.
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined,no-any-return]
        if not self.has_view_permission(request, holder):
            raise PermissionDenied
        sections: list[dict[str, object]] = []
        for label, action in GOVERNED:
            model = apps.get_model(label)
            model_admin = self.admin_site.get_model_admin(model)
            if not model_admin.has_view_permission(request):
                continue  # what this admin may not see in the console is not listed here
            rows = audience.holdings(holder, model_admin.get_queryset(request), action)
            for row in rows:
                if model_admin.has_change_permission(request, row.obj):
                    row.url = reverse(
                        f"admin:{model._meta.app_label}_{model._meta.model_name}_access",
                        args=[cast(Model, row.obj).pk],  # set once holdings() returns
                    )
            sections.append(
                {"name": model._meta.verbose_name_plural, "action": action, "rows": rows}
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": holder,
            "title": f"What {describe(holder)} may use",
            "page_title": "Access",
            "holder_kind": "group" if isinstance(holder, Group) else "user",
            "members": (
                holder.user_set.filter(is_active=True).count() if isinstance(holder, Group) else 0
            ),
            "sections": sections,
        }
        return TemplateResponse(request, "admin/warden/holder_access.html", context)
