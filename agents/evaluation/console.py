"""Evaluations in the admin console.

- Evaluation sets with their cases (inline), each list edited as lines and checked
  (agents.evaluation.cases), by the agent's owners only (agents.evaluation.owners: the rule the
  API keeps too); every change in the admin's log and django-auditlog's.
- On a set, "Evaluate": pick a version of its agent (its live one unless told) and the
  evaluation starts (agents.evaluation.services.evaluation_start); its page follows it while it
  runs (static/portal/evaluation.js asks `progress/` every few seconds) and shows each case's
  answer, scores, tool calls and run, with the overall scores, latency, tokens and cost.
- Side by side: two evaluations of one set, case by case (agents.evaluation.pages).
- From the feedback list, "Add to an evaluation set" (agents.evaluation.cases).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from agents.evaluation.cases import (
    CaseRefused,
    case_problems,
    evaluation_case_from_feedback,
    lines_of,
    lines_text,
    tools_from,
    tools_text,
)
from agents.evaluation.owners import (
    access_evaluation,
    evaluation_agents,
    evaluation_sets_of,
    evaluations_of,
)
from agents.evaluation.pages import evaluation_report, score_of, side_by_side
from agents.models import AgentVersion, EvaluationCase, EvaluationRun, EvaluationSet
from audit.admin import ReadOnlyAdmin
from governance.access import NoAccess

LISTED = 20  # a set's latest evaluations, on its page


def owns_an_agent(request: HttpRequest) -> bool:
    """Whether the viewer owns an agent (asked by every admin page's app list: once a request)."""
    if not hasattr(request, "_evaluation_owner"):
        user = request.user
        # A superuser sees the menu without a query (each set is still checked when opened).
        request._evaluation_owner = bool(  # type: ignore[attr-defined]
            user.is_active
            and user.is_staff
            and (user.is_superuser or evaluation_agents(user).exists())
        )
    return bool(request._evaluation_owner)  # type: ignore[attr-defined]


def _may(request: HttpRequest, agent_id: int | None) -> bool:
    if agent_id is None or not owns_an_agent(request):
        return False
    owned: dict[int, bool] = request.__dict__.setdefault("_evaluation_agents", {})
    if agent_id not in owned:
        owned[agent_id] = evaluation_agents(request.user).filter(pk=agent_id).exists()
    return owned[agent_id]


class OwnersOnly:
    """Admin permissions by the owners' rule: the agent's owners see the model; nobody else
    sees it at all (EvaluationSetAdmin lets them change it too)."""

    def _agent_id(self, obj) -> int | None:
        raise NotImplementedError

    def has_module_permission(self, request) -> bool:
        return owns_an_agent(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return owns_an_agent(request) if obj is None else _may(request, self._agent_id(obj))


class LinesField(forms.CharField):
    """A JSON list of texts, edited one a line."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60})

    def __init__(self, **kwargs) -> None:
        super().__init__(required=False, strip=False, **kwargs)

    def prepare_value(self, value):
        return lines_text(value) if isinstance(value, list) else value

    def to_python(self, value):
        return lines_of(super().to_python(value) or "")


class ToolCallsField(forms.CharField):
    """Expected tool calls, one a line: the tool's name, then, optionally, the JSON object of
    the arguments the call must include."""

    widget = forms.Textarea(attrs={"rows": 2, "cols": 60})

    def __init__(self, **kwargs) -> None:
        super().__init__(required=False, strip=False, **kwargs)

    def prepare_value(self, value):
        return tools_text(value) if isinstance(value, list) else value

    def to_python(self, value):
        calls, problems = tools_from(super().to_python(value) or "")
        if problems:
            raise forms.ValidationError(problems)
        return calls


class EvaluationCaseForm(forms.ModelForm):
    expected_facts = LinesField(
        label="Expected facts",
        help_text="One a line: a phrase the answer must state (any case).",
    )
    expected_citations = LinesField(
        label="Expected citations",
        help_text="One a line: the title of a document the answer must cite.",
    )
    expected_tools = ToolCallsField(
        label="Expected tool calls",
        help_text="One a line: a tool's name, then optionally the arguments the call must "
        'include, as JSON: create_ticket {"title": "VPN down"}.',
    )

    class Meta:
        model = EvaluationCase
        fields = (
            "question",
            "expect",
            "expected_facts",
            "expected_citations",
            "expected_tools",
            "notes",
        )
        widgets = {
            "question": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "notes": forms.Textarea(attrs={"rows": 2, "cols": 60}),
        }

    def clean(self):
        data = super().clean()
        if any(name not in data for name in ("question", "expect", "expected_tools")):
            return data  # a field's own error said it already
        found = case_problems(
            question=data["question"],
            expect=data["expect"],
            facts=data.get("expected_facts", []),
            citations=data.get("expected_citations", []),
            tools=data["expected_tools"],
        )
        for name, problems in found.items():
            for problem in problems:
                self.add_error(name, problem)
        return data


class EvaluationCaseInline(admin.StackedInline):
    model = EvaluationCase
    form = EvaluationCaseForm
    extra = 1
    fields = (*EvaluationCaseForm.Meta.fields, "source")
    readonly_fields = ("source",)

    @admin.display(description="made from")
    def source(self, obj) -> str:
        if obj is None or obj.source_run_id is None:
            return "—"
        return format_html(
            '<a href="{}">run {}</a>',
            reverse("run-trace", args=[obj.source_run_id]),
            obj.source_run_id,
        )

    # The set's permissions are the cases' (the inline asks with the set as `obj`).
    def has_view_permission(self, request, obj=None) -> bool:
        return obj is None or _may(request, obj.agent_id)

    has_change_permission = has_view_permission
    has_delete_permission = has_view_permission
    has_add_permission = has_view_permission


class EvaluateForm(forms.Form):
    version = forms.ModelChoiceField(
        queryset=AgentVersion.objects.none(),
        empty_label=None,
        help_text="The version each case runs as (tools in sandbox mode: calls are recorded, "
        "never made).",
    )

    def __init__(self, *args, evaluation_set: EvaluationSet, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        agent = evaluation_set.agent
        field = self.fields["version"]
        field.queryset = AgentVersion.objects.filter(agent=agent).order_by("-number")  # type: ignore[attr-defined]
        field.label_from_instance = lambda v: _version_label(v, agent.live_version_id)  # type: ignore[attr-defined]
        field.initial = agent.live_version_id


def _version_label(version: AgentVersion, live_id: int | None) -> str:
    label = f"v{version.number}"
    if version.pk == live_id:
        label += " (live)"
    if version.reason:
        label += f": {version.reason[:80]}"
    return label


@admin.register(EvaluationSet)
class EvaluationSetAdmin(OwnersOnly, admin.ModelAdmin):
    list_display = ("name", "agent", "case_count", "pass_mark", "created_at")
    list_filter = (("agent", admin.RelatedOnlyFieldListFilter),)
    search_fields = ("name", "agent__name")
    fields = ("agent", "name", "description", "pass_mark")
    inlines = [EvaluationCaseInline]
    change_form_template = "admin/agents/evaluationset/change_form.html"

    def _agent_id(self, obj) -> int | None:
        return obj.agent_id

    def has_change_permission(self, request, obj=None) -> bool:
        return self.has_view_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.has_view_permission(request, obj)

    def has_add_permission(self, request, obj=None) -> bool:
        return self.has_view_permission(request, obj)

    def get_queryset(self, request):
        from django.db.models import Count

        found = evaluation_sets_of(request.user).select_related("agent")
        return found.annotate(cases_counted=Count("cases"))

    @admin.display(description="cases", ordering="cases_counted")
    def case_count(self, obj) -> int:
        return obj.cases_counted

    def get_readonly_fields(self, request, obj=None):
        return ("agent",) if obj is not None else ()  # its cases are that agent's questions

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "agent":
            kwargs["queryset"] = evaluation_agents(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def get_urls(self):
        return [
            path(
                "<path:object_id>/evaluate/",
                self.admin_site.admin_view(self.evaluate_view),
                name="agents_evaluationset_evaluate",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        found = self.get_object(request, unquote(object_id))
        if found is not None:
            latest = (
                EvaluationRun.objects.filter(set=found)
                .select_related("version", "started_by")
                .order_by("-created_at", "-pk")[:LISTED]
            )
            extra_context = {**(extra_context or {}), "evaluations": _listed(latest)}
        return super().change_view(request, object_id, form_url, extra_context)

    def evaluate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        from agents.evaluation.services import EvaluationError, evaluation_start

        found = self.get_object(request, unquote(object_id))
        if found is None or not self.has_view_permission(request, found):
            raise Http404("no such evaluation set")
        form = EvaluateForm(request.POST or None, evaluation_set=found)
        if request.method == "POST" and form.is_valid():
            try:
                evaluation = evaluation_start(
                    evaluation_set=found, version=form.cleaned_data["version"], actor=request.user
                )
            except EvaluationError as refused:
                messages.error(request, f"Not started: {refused}.")
            else:
                messages.success(request, f"Evaluation {evaluation.pk} started.")
                return redirect("admin:agents_evaluationrun_change", evaluation.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": found,
            "form": form,
            "title": f"Evaluate {found.agent}: {found}",
            "page_title": "Evaluate",
            "cases": found.cases.count(),
        }
        return TemplateResponse(request, "admin/agents/evaluationset/evaluate.html", context)


def _listed(evaluations) -> list[dict[str, Any]]:
    return [
        {
            "evaluation": e,
            "overall": score_of(e.scores, "overall"),
        }
        for e in evaluations
    ]


@admin.register(EvaluationRun)
class EvaluationRunAdmin(OwnersOnly, ReadOnlyAdmin):
    """Evaluations: started on a set's page, written by their runner; each one's page is its
    report (the change page), and two of one set compare side by side."""

    list_display = (
        "id",
        "set",
        "agent",
        "version",
        "state",
        "overall",
        "passed",
        "started_by",
        "created_at",
    )
    list_filter = ("state", ("set", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("set__agent", "version", "started_by")
    actions = ["compare"]

    def _agent_id(self, obj) -> int | None:
        return obj.set.agent_id

    def get_queryset(self, request):
        return evaluations_of(request.user)

    @admin.display(description="agent", ordering="set__agent__name")
    def agent(self, obj) -> str:
        return str(obj.set.agent)

    @admin.display(description="overall")
    def overall(self, obj) -> str:
        value = score_of(obj.scores, "overall")
        return "—" if value is None else f"{value:.2f}"

    @admin.action(description="Compare the two selected evaluations side by side")
    def compare(self, request, queryset):
        chosen = list(queryset.order_by("created_at", "pk")[:3])
        if len(chosen) != 2 or chosen[0].set_id != chosen[1].set_id:
            messages.error(request, "Select two evaluations of one set.")
            return None
        return redirect(_compare_url(chosen[0].pk, chosen[1].pk))

    def get_urls(self):
        site = self.admin_site
        return [
            path(
                "<int:pk>/progress/",
                site.admin_view(self.progress_view),
                name="agents_evaluationrun_progress",
            ),
            path(
                "compare/",
                site.admin_view(self.compare_view),
                name="agents_evaluationrun_compare",
            ),
            *super().get_urls(),
        ]

    def _evaluation(self, request, pk) -> EvaluationRun:
        if not owns_an_agent(request):
            raise Http404("no such evaluation")
        try:
            return access_evaluation(request.user, pk)
        except NoAccess:
            raise Http404("no such evaluation") from None

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The evaluation's report."""
        evaluation = self._evaluation(request, unquote(object_id))
        report = evaluation_report(evaluation, request.user)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": evaluation,
            "report": report,
            "title": f"Evaluation {evaluation.pk}: {evaluation.set.agent} {evaluation.version} "
            f"on {evaluation.set}",
            "page_title": f"Evaluation {evaluation.pk}",
            "others": EvaluationRun.objects.filter(set_id=evaluation.set_id)
            .exclude(pk=evaluation.pk)
            .select_related("version")
            .order_by("-created_at", "-pk")[:LISTED],
        }
        return TemplateResponse(request, "admin/agents/evaluationrun/report.html", context)

    def progress_view(self, request, pk: int) -> HttpResponse:
        """The report's state and results as JSON (the page asks while the evaluation runs)."""
        evaluation = self._evaluation(request, pk)
        report = evaluation_report(evaluation, request.user)
        body = {
            **report.as_dict(),
            "html": render_to_string(
                "admin/agents/evaluationrun/_results.html", {"report": report}, request=request
            ),
        }
        return JsonResponse(body)  # admin_view: never cached

    def compare_view(self, request) -> HttpResponse:
        """`?a=<id>&b=<id>`: two evaluations of one set, case by case."""
        if not ("a" in request.GET and "b" in request.GET):
            messages.info(request, "Select two evaluations of one set to compare them.")
            return HttpResponseRedirect(reverse("admin:agents_evaluationrun_changelist"))
        first = self._evaluation(request, request.GET.get("a", ""))
        second = self._evaluation(request, request.GET.get("b", ""))
        if first.set_id != second.set_id:
            messages.error(request, "Only two evaluations of one set compare case by case.")
            return HttpResponseRedirect(reverse("admin:agents_evaluationrun_changelist"))
        comparison = side_by_side(first, second, request.user)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "comparison": comparison,
            "counts": comparison.counts(),
            "title": f"{first.set}: evaluation {first.pk} ({first.version}) and "
            f"{second.pk} ({second.version}) side by side",
        }
        return TemplateResponse(request, "admin/agents/evaluationrun/compare.html", context)


def _compare_url(a: int, b: int) -> str:
    return f"{reverse('admin:agents_evaluationrun_compare')}?a={a}&b={b}"


class AddToSetForm(forms.Form):
    evaluation_set = forms.ModelChoiceField(
        queryset=EvaluationSet.objects.none(), label="Evaluation set", empty_label=None
    )

    def __init__(self, *args, sets, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["evaluation_set"]
        field.queryset = sets  # type: ignore[attr-defined]
        field.label_from_instance = lambda s: f"{s.agent}: {s.name}"  # type: ignore[attr-defined]


def add_to_evaluation_set(model_admin, request, queryset):
    """The feedback admin's action: the selected feedback's questions as cases of a set of their
    agent's (one agent at a time), on a page that asks which set."""
    chosen = list(queryset.select_related("run__agent", "author"))
    agents = {f.run.agent_id for f in chosen}
    if len(agents) != 1 or None in agents:
        messages.error(request, "Select feedback on one agent's answers.")
        return None
    sets = evaluation_sets_of(request.user).filter(agent_id__in=agents).select_related("agent")
    if not sets.exists():
        messages.error(
            request,
            "That agent has no evaluation set you may change: add one under Evaluation sets.",
        )
        return None
    form = AddToSetForm(request.POST if "evaluation_set" in request.POST else None, sets=sets)
    if form.is_valid():
        chosen_set = form.cleaned_data["evaluation_set"]
        added = []
        for feedback in chosen:
            try:
                case = evaluation_case_from_feedback(
                    feedback=feedback, evaluation_set=chosen_set, actor=request.user
                )
            except (CaseRefused, NoAccess) as refused:
                messages.error(request, str(refused) or "Not allowed.")
            else:
                added.append(case)
        if added:
            messages.success(
                request,
                f"{len(added)} case(s) added to “{chosen_set}”: set or check what each expects.",
            )
            return redirect("admin:agents_evaluationset_change", chosen_set.pk)
        return None
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Add to an evaluation set",
        "form": form,
        "chosen": chosen,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/agents/feedback/add_to_set.html", context)


add_to_evaluation_set.short_description = "Add to an evaluation set"  # type: ignore[attr-defined]
add_to_evaluation_set.allowed_permissions = ("evaluate",)  # type: ignore[attr-defined]
