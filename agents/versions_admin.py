"""Agent versions in the admin console (issue 25; the versions themselves: agents.versions).

- The agent's form (its change page and its builder) asks why, and whether the change serves
  from now on or waits as a draft version; after the many-to-many fields are saved, in the same
  transaction, the agent's behaviour is recorded as its next version (none if it did not change).
- `<pk>/versions/`: each version with who made it, when and why, what changed, which one is live
  and how many runs each served; a version's page; a diff of any two, field by field and the
  system prompt line by line.
- `<pk>/versions/<version>/rollback/`: a confirmation with a reason, then agents.versions
  .version_rollback. Who may see the pages: whoever may view the agent in the admin; who may
  roll back: whoever may change it (the admin's permission, or guardian's on that agent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.functional import cached_property
from django.utils.http import urlencode

from agents.models import Agent, AgentVersion
from agents.versions import (
    BEHAVIOUR,
    LABELS,
    OUTSIDE,
    VersionError,
    config_readable,
    version_changes,
    version_diff,
    version_record,
    version_rollback,
    versions_listed,
    versions_live_and_newest,
)

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

    _ModelAdmin = ModelAdmin[Agent]
else:
    _ModelAdmin = object

SERVE_NOW = "now"
DRAFT = "draft"
RELEASE_CHOICES = [
    (SERVE_NOW, "Serve this change now"),
    (DRAFT, "Keep it as a draft version (start a release from the versions page)"),
]
REASON_LENGTH = 2000
VERSION_FIELDS = ("version_reason", "version_release")


class AgentForm(forms.ModelForm):
    """The agent's admin form (the admin gives it its model and fields), with why it changed and
    whether the change serves now. Neither is required: a form posted without them (a script,
    an older page) serves its change now."""

    version_reason = forms.CharField(
        label="Reason for this change",
        required=False,
        max_length=REASON_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Kept with the version this change makes, and shown on the versions page.",
    )
    version_release = forms.ChoiceField(
        label="When it serves",
        choices=RELEASE_CHOICES,
        initial=SERVE_NOW,
        required=False,
        widget=forms.RadioSelect,
        help_text="Only a change to what the agent does (its prompt, route, tools, knowledge "
        "bases, the agents it may ask, limits, threshold, injection setting) makes a version.",
    )

    @cached_property
    def changed_data(self) -> list[str]:
        """The agent's fields that changed: why and when are about the change, not the agent
        (the admin's log, the builder's "Nothing changed")."""
        return [name for name in super().changed_data if name not in VERSION_FIELDS]


def release_url(agent: Agent, version: AgentVersion) -> str | None:
    """Where a release of `version` starts (agents' release page, if installed), or None."""
    try:
        url = reverse("admin:agents_release_add")
    except NoReverseMatch:
        return None
    return f"{url}?{urlencode({'agent': agent.pk, 'candidate': version.pk})}"


def author(version: AgentVersion) -> str:
    """Who made a version, for people."""
    if version.created_by is not None:
        return version.created_by.get_username()
    if version.reason == OUTSIDE:
        return "nobody known (outside the console)"
    return "Warden"


class RollbackForm(forms.Form):
    reason = forms.CharField(
        label="Why roll back",
        required=False,
        max_length=REASON_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Kept with the new version; left empty, it says which version it restores.",
    )


def _superseding(request: HttpRequest, agent: Agent, version: AgentVersion) -> None:
    """A version made live here ends the agent's running release (agents.releases)."""
    from agents.releases import release_supersede

    with transaction.atomic():
        stopped = release_supersede(agent=agent, version=version, actor=request.user)
    if stopped is not None:
        messages.warning(
            request,
            f"The release of v{stopped.candidate.number} was stopped: v{version.number} now "
            "serves every run.",
        )


class VersionsMixin(_ModelAdmin):
    """Records a version on each save of the agent's form, and adds the versions pages."""

    form = AgentForm

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        data = form.cleaned_data
        # A new agent's first version serves: a draft would leave nothing live to serve.
        draft = change and data.get("version_release") == DRAFT
        version = version_record(
            agent=form.instance,
            actor=request.user,
            reason=data.get("version_reason") or "",
            release=not draft,
        )
        if version is None:
            return
        if draft:
            live = form.instance.live_version
            messages.info(
                request,
                f"Saved as draft version v{version.number}: "
                f"{'v' + str(live.number) if live else 'no version'} keeps serving its runs "
                "until it is released.",
            )
        else:
            messages.info(request, f"Recorded as version v{version.number}, serving from now on.")
            _superseding(request, form.instance, version)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        if obj is None:  # a new agent's first version serves (save_related)
            fields.remove("version_release")
        return fields

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        agent = self.get_object(request, unquote(object_id))
        if agent is not None:
            live, newest = versions_live_and_newest(agent)
            extra_context = {
                **(extra_context or {}),
                "versions": {"live": live, "newest": newest},
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        site = self.admin_site
        return [
            path(
                "<path:object_id>/versions/",
                site.admin_view(self.versions_view),
                name="agents_agent_versions",
            ),
            path(
                "<path:object_id>/versions/diff/",
                site.admin_view(self.version_diff_view),
                name="agents_agent_versions_diff",
            ),
            path(
                "<path:object_id>/versions/<int:version_id>/",
                site.admin_view(self.version_view),
                name="agents_agent_version",
            ),
            path(
                "<path:object_id>/versions/<int:version_id>/rollback/",
                site.admin_view(self.version_rollback_view),
                name="agents_agent_version_rollback",
            ),
            *super().get_urls(),
        ]

    # Who may do what -------------------------------------------------------------------

    def _agent(self, request: HttpRequest, object_id: str) -> Agent | None:
        """The agent, if this admin may view it; PermissionDenied if it is there but not theirs
        to view; None if it is missing (or hidden from this admin, as for the change page)."""
        agent = self.get_object(request, unquote(object_id))
        if agent is None:
            return None
        if not (self.has_view_permission(request, agent) or self.may_change(request, agent)):
            raise PermissionDenied
        return agent

    def may_change(self, request: HttpRequest, agent: Agent) -> bool:
        """The admin's model-wide permission, or guardian's object permission on the agent."""
        return self.has_change_permission(request, agent) or request.user.has_perm(
            "agents.change_agent", agent
        )

    def _missing(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # Django's own answer for a missing object: a private method django-stubs omits.
        return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined]

    def _version(self, agent: Agent, version_id: Any) -> AgentVersion:
        try:
            return AgentVersion.objects.select_related("created_by", "rollback_of").get(
                pk=int(version_id), agent=agent
            )
        except (AgentVersion.DoesNotExist, ValueError, TypeError):
            raise Http404("no such version of this agent") from None

    def _page(self, request: HttpRequest, agent: Agent, title: str, **context: Any) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": agent,
            "title": title,
            "page_title": title,
            "versions_url": reverse("admin:agents_agent_versions", args=[agent.pk]),
            "may_change": self.may_change(request, agent),
            **context,
        }

    # Pages -----------------------------------------------------------------------------

    def versions_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        versions = list(versions_listed(agent))
        newest = versions[0] if versions else None
        rows = [
            {
                "version": v,
                "by": author(v),
                "live": v.pk == agent.live_version_id,
                "newest": v is newest,
                "previous": versions[i + 1] if i + 1 < len(versions) else None,
                "release_url": release_url(agent, v)
                if v.pk != agent.live_version_id and v.route_id is not None
                else None,
            }
            for i, v in enumerate(versions)
        ]
        context = self._page(
            request,
            agent,
            "Versions",
            rows=rows,
            live=next((v for v in versions if v.pk == agent.live_version_id), None),
            newest=newest,
        )
        return TemplateResponse(request, "admin/agents/agent/versions.html", context)

    def version_view(self, request: HttpRequest, object_id: str, version_id: int) -> HttpResponse:
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        version = self._version(agent, version_id)
        previous = (
            AgentVersion.objects.filter(agent=agent, number__lt=version.number)
            .order_by("-number")
            .first()
        )
        config = config_readable([version.config])[0]
        context = self._page(
            request,
            agent,
            f"Version v{version.number}",
            version=version,
            by=author(version),
            live=version.pk == agent.live_version_id,
            fields=[(LABELS[f], f, config[f]) for f in BEHAVIOUR],
            previous=previous,
            release_url=release_url(agent, version)
            if version.pk != agent.live_version_id and version.route_id is not None
            else None,
        )
        return TemplateResponse(request, "admin/agents/agent/version.html", context)

    def version_diff_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        numbers = list(versions_listed(agent).values_list("pk", "number"))
        if not numbers:
            raise Http404("this agent has no version yet")
        before = self._version(agent, request.GET.get("from", numbers[-1][0]))
        after = self._version(agent, request.GET.get("to", numbers[0][0]))
        context = self._page(
            request,
            agent,
            f"v{before.number} against v{after.number}",
            before=before,
            after=after,
            rows=version_diff(before, after),
            choices=numbers,
        )
        return TemplateResponse(request, "admin/agents/agent/version_diff.html", context)

    def version_rollback_view(
        self, request: HttpRequest, object_id: str, version_id: int
    ) -> HttpResponse:
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        if not self.may_change(request, agent):
            raise PermissionDenied
        version = self._version(agent, version_id)
        form = RollbackForm(request.POST if request.method == "POST" else None)
        error = ""
        if request.method == "POST" and form.is_valid():
            try:
                with transaction.atomic(durable=True):
                    made = version_rollback(
                        agent=agent,
                        version=version,
                        actor=request.user,
                        reason=form.cleaned_data["reason"],
                    )
            except VersionError as exc:
                error = str(exc)
            else:
                messages.success(
                    request,
                    f"Rolled back to v{version.number}: v{made.number} serves from now on.",
                )
                _superseding(request, agent, made)
                return HttpResponseRedirect(reverse("admin:agents_agent_versions", args=[agent.pk]))
        context = self._page(
            request,
            agent,
            f"Roll back to v{version.number}",
            version=version,
            form=form,
            error=error,
            changes=_rollback_preview(agent, version),
        )
        status = 400 if error else 200
        page = "admin/agents/agent/version_rollback.html"
        return TemplateResponse(request, page, context, status=status)


def _rollback_preview(agent: Agent, version: AgentVersion) -> list[dict]:
    """What the rollback would change, against what the agent does now (its newest version)."""
    newest = AgentVersion.objects.filter(agent=agent).order_by("-number").first()
    if newest is None:
        return []
    return [
        {**change, "before": _shown(change["before"]), "after": _shown(change["after"])}
        for change in version_changes(newest.config, version.config)
    ]


def _shown(value: Any) -> Any:
    if isinstance(value, list):
        return ", ".join(value) or "none"
    return "—" if value is None else value
