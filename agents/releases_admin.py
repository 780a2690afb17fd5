"""Releases in the console: start one (the add page, which the versions page links to with
`?agent=<id>&candidate=<version id>`), a page per release with each version's live metrics side
by side, and its buttons to promote, stop or roll it back.

Who may: whoever may change the release's agent (agents.releases.release_agents): the list, the
page and the buttons ask it of that agent; a denial writes nothing. Every change goes through
agents.releases' services (audited); the admin never saves a release itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from agents.models import Agent, AgentVersion, Release, ReleaseState
from agents.releases import (
    GUARDS,
    ReleaseError,
    VersionMetrics,
    promotion_unmet,
    release_agents,
    release_metrics,
    release_promote,
    release_refusal,
    release_rollback,
    release_start,
    release_stop,
)

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

    _ModelAdmin = ModelAdmin[Release]
else:
    _ModelAdmin = admin.ModelAdmin

ENDINGS: dict[str, tuple[Callable[..., Release], str]] = {
    "promote": (release_promote, "promoted: it serves every run now"),
    "stop": (release_stop, "stopped: the live version serves every run again"),
    "rollback": (release_rollback, "rolled back: the agent is on the baseline's config again"),
}


class CandidateField(forms.ModelChoiceField):
    def label_from_instance(self, obj: AgentVersion) -> str:
        reason = f": {obj.reason[:60]}" if obj.reason else ""
        return f"{obj.agent.name} v{obj.number}{reason}"


class ReleaseStartForm(forms.ModelForm):
    candidate = CandidateField(
        queryset=AgentVersion.objects.none(),
        help_text="The version to try: it serves the share of conversations below, the live "
        "version the others.",
    )

    class Meta:
        model = Release
        fields = (
            "agent",
            "candidate",
            "kind",
            "share",
            *GUARDS,
            "min_runs",
            "min_duration",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        agent, candidate = data.get("agent"), data.get("candidate")
        if agent is not None and candidate is not None:
            try:
                release_refusal(agent=agent, candidate=candidate, live_id=agent.live_version_id)
            except ReleaseError as exc:
                raise ValidationError(str(exc)) from exc
        return data


class ReleaseAdmin(_ModelAdmin):
    list_display = ("id", "agent", "candidate_shown", "baseline_shown", "kind", "share", "state")
    list_display_links = ("id", "agent")
    list_filter = ("state", "kind")
    list_select_related = ("agent", "candidate", "baseline")
    date_hierarchy = "started_at"
    form = ReleaseStartForm

    @admin.display(description="candidate")
    def candidate_shown(self, obj: Release) -> str:
        return f"v{obj.candidate.number}"

    @admin.display(description="baseline")
    def baseline_shown(self, obj: Release) -> str:
        return f"v{obj.baseline.number}"

    # --- who may ---------------------------------------------------------------------------

    def _agents(self, request: HttpRequest) -> QuerySet[Agent]:
        if not hasattr(request, "_release_agents"):
            request._release_agents = release_agents(request.user)  # type: ignore[attr-defined]
        return request._release_agents  # type: ignore[attr-defined]

    def _any(self, request: HttpRequest) -> bool:
        if not hasattr(request, "_release_any"):
            user = request.user
            # A superuser may change every agent: no query for the menu every admin page shows.
            request._release_any = (  # type: ignore[attr-defined]
                user.is_active and user.is_superuser
            ) or self._agents(request).exists()
        return request._release_any  # type: ignore[attr-defined]

    def _may(self, request: HttpRequest, obj: Release | None) -> bool:
        if obj is None:
            return self._any(request)
        return self._agents(request).filter(pk=obj.agent_id).exists()

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._any(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a release is a record: it ends, it is not deleted

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._any(request)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Release]:
        mine = super().get_queryset(request).filter(agent__in=self._agents(request))
        return mine.select_related("agent", "candidate", "baseline", "started_by", "ended_by")

    # --- starting --------------------------------------------------------------------------

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change=change, **kwargs)
        agents = self._agents(request)
        form.base_fields["agent"].queryset = agents  # type: ignore[attr-defined]
        versions = AgentVersion.objects.filter(agent__in=agents).select_related("agent")
        agent_id = request.GET.get("agent") or request.POST.get("agent")
        # Digits only, and few enough for a bigint: anything else filters nothing.
        if agent_id and agent_id.isascii() and agent_id.isdigit() and len(agent_id) <= 18:
            versions = versions.filter(agent_id=int(agent_id))
        form.base_fields["candidate"].queryset = versions.order_by("agent__name", "-number")  # type: ignore[attr-defined]
        return form

    def save_model(self, request: HttpRequest, obj: Release, form: Any, change: bool) -> None:
        if change:  # the release page has no form: nothing is changed in place
            raise PermissionDenied
        fields = {name: form.cleaned_data[name] for name in (*GUARDS, "min_runs", "min_duration")}
        started = release_start(
            agent=form.cleaned_data["agent"],
            candidate=form.cleaned_data["candidate"],
            actor=request.user,
            share=form.cleaned_data["share"],
            kind=form.cleaned_data["kind"],
            **fields,
        )
        obj.pk = started.pk
        obj._state.adding = False

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # nothing related: the service wrote it all

    def response_add(
        self, request: HttpRequest, obj: Release, post_url_continue: str | None = None
    ) -> HttpResponse:
        messages.success(request, f"The release of v{obj.candidate.number} started.")
        return HttpResponseRedirect(reverse("admin:agents_release_change", args=[obj.pk]))

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if object_id is not None:
            return self.release_view(request, object_id)
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ReleaseError as exc:  # another release started since the form was checked
            messages.error(request, str(exc))
            return HttpResponseRedirect(request.get_full_path())

    # --- the release page and its buttons --------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/end/",
                self.admin_site.admin_view(require_POST(self.end_view)),
                name="agents_release_end",
            ),
            *super().get_urls(),
        ]

    def _release(self, request: HttpRequest, object_id: str) -> Release | None:
        """The release, if this admin may see it (its agent is one they may change): None
        for a missing one and someone else's alike."""
        release = self.get_object(request, unquote(object_id))
        if release is None or not self.has_change_permission(request, release):
            return None
        return release

    def _missing(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # Django's own answer for a missing object: a private method django-stubs omits.
        return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined]

    def release_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        release = self._release(request, object_id)
        if release is None:
            return self._missing(request, object_id)
        metrics = release_metrics(release)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": release,
            "release": release,
            "title": f"{release.agent.name}: {release}",
            "running": release.state == ReleaseState.RUNNING,
            "rows": _rows(release, metrics.candidate, metrics.baseline),
            "unmet": promotion_unmet(release, metrics)
            if release.state == ReleaseState.RUNNING
            else [],
            "end_url": reverse("admin:agents_release_end", args=[release.pk]),
        }
        return TemplateResponse(request, "admin/agents/release/release.html", context)

    def end_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        release = self._release(request, object_id)
        if release is None:  # nothing is written
            return self._missing(request, object_id)
        page = reverse("admin:agents_release_change", args=[release.pk])
        ending = ENDINGS.get(request.POST.get("action", ""))
        if ending is None:
            messages.error(request, "Promote, stop or roll back: nothing else.")
            return HttpResponseRedirect(page)
        service, done = ending
        reason = request.POST.get("reason", "").strip()[:2000]
        try:
            service(release=release, actor=request.user, reason=reason)
        except ReleaseError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"The release of v{release.candidate.number} was {done}.")
        return HttpResponseRedirect(page)


def _shown(value: Any, unit: str) -> str:
    if value is None:
        return "none yet"
    return f"{value}{unit}"


def _rows(
    release: Release, candidate: VersionMetrics, baseline: VersionMetrics
) -> list[tuple[str, str, str, str, bool]]:
    """The page's table: (metric, candidate, baseline, the candidate's limit, over it)."""
    rows: list[tuple[str, str, str, str, bool]] = [
        (
            "Runs: started, settled, finished",
            f"{candidate.runs}, {candidate.settled}, {candidate.finished}",
            f"{baseline.runs}, {baseline.settled}, {baseline.finished}",
            "",
            False,
        ),
        ("Failed", str(candidate.failed), str(baseline.failed), "", False),
        ("Asked a reviewer", str(candidate.escalated), str(baseline.escalated), "", False),
        ("Held answers", str(candidate.held), str(baseline.held), "", False),
        (
            "Feedback (helpful / not)",
            f"{candidate.thumbs_up} / {candidate.thumbs_down}",
            f"{baseline.thumbs_up} / {baseline.thumbs_down}",
            "",
            False,
        ),
        (
            "p50 latency",
            _shown(candidate.p50_latency_ms, " ms"),
            _shown(baseline.p50_latency_ms, " ms"),
            "",
            False,
        ),
    ]
    for name, guard in GUARDS.items():
        limit = getattr(release, name)
        value = guard.value(candidate)
        over = limit is not None and value is not None and value > limit
        rows.append(
            (
                guard.label.capitalize(),
                _shown(value, guard.unit),
                _shown(guard.value(baseline), guard.unit),
                _shown(limit, guard.unit) if limit is not None else "not guarded",
                over,
            )
        )
    return rows


admin.site.register(Release, ReleaseAdmin)
