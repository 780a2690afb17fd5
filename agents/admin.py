from typing import ClassVar

from django.contrib import admin, messages

from agents import releases_admin  # noqa: F401 - registers Release's admin
from agents.builder_admin import BuilderMixin
from agents.knowledge import admin as knowledge_admin  # noqa: F401 - registers its models
from agents.models import Agent, Deployment, ModelRoute, Run, RunStep
from agents.selectors import HIDDEN, UNREAD_RELEASE, unreadable_sources
from agents.versions_admin import VersionsMixin
from audit.admin import ReadOnlyAdmin
from governance import admin as governance_admin
from governance.access_admin import GovernedAdminMixin
from governance.admin import personal_field as _masked
from governance.models import Escalation

# A run is its owner's conversation; the console shows personal data in it as the audit trail
# keeps it, a keyed hash (audit/pii.py).
_PERSONAL = ("input", "output", "answer", "citations", "error")


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    fields = (
        "position",
        "model",
        "api_base",
        "api_key_ref",
        "region",
        "weight",
        "input_cost_per_token",
        "output_cost_per_token",
    )


@admin.register(ModelRoute)
class ModelRouteAdmin(GovernedAdminMixin, admin.ModelAdmin):
    list_display = ("name", "num_retries", "timeout_seconds", "cooldown_seconds", "cache_seconds")
    search_fields = ("name",)
    inlines = [DeploymentInline]


@admin.register(Agent)
class AgentAdmin(VersionsMixin, BuilderMixin, GovernedAdminMixin, admin.ModelAdmin):
    """Agents; each has a builder page (agents.builder_admin) and its versions
    (agents.versions_admin) beside its change page; each save of its behaviour is a version."""

    list_display = (
        *("name", "slug", "route", "enabled", "mcp_exposed", "max_steps"),
        "confidence_threshold",
    )
    list_filter = ("enabled", "mcp_exposed", "route")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("tools", "knowledge_bases", "delegates", "approver_groups")


class RunStepInline(admin.TabularInline):
    model = RunStep
    extra = 0
    can_delete = False
    fields: ClassVar[tuple[str, ...]] = (
        "index",
        "kind",
        "status",
        "deployment",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "input_masked",
        "output_masked",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    input_masked = _masked("input")
    output_masked = _masked("output")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


def _hidden(name: str):
    """A read-only field in place of `name` of a run that drew on a knowledge base the viewer
    may not read (agents.selectors.unreadable_sources: the trace's rule, superusers too)."""

    @admin.display(description=name.replace("_", " "))
    def show(self, obj) -> str:
        return HIDDEN

    return show


def _drew_on_unreadable(request, run_id) -> bool:
    return run_id is not None and run_id in unreadable_sources(request.user, {run_id})[0]


class HiddenRunStepInline(RunStepInline):
    """The steps of such a run: what each was and cost, not what went in or came out."""

    fields = tuple(
        f.replace("_masked", "_hidden") if f.endswith("_masked") else f
        for f in RunStepInline.fields
    )
    readonly_fields = fields
    input_hidden = _hidden("input")
    output_hidden = _hidden("output")


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    """Runs are the orchestrator's record: readable here, changed only by their services."""

    list_display = (
        "id",
        "kind",
        "agent",
        "tool",
        "actor",
        "state",
        "created_at",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    )
    list_filter = ("state", "kind", "agent")
    search_fields = ("id", "input", "answer")
    inlines = [RunStepInline]
    fields = readonly_fields = tuple(
        f"{f.name}_masked" if f.name in _PERSONAL else f.name for f in Run._meta.fields
    )
    input_masked = _masked("input")
    answer_masked = _masked("answer")
    citations_masked = _masked("citations")
    error_masked = _masked("error")
    answer_hidden = _hidden("answer")
    citations_hidden = _hidden("citations")
    _FROM_READS = ("answer_masked", "citations_masked")  # what the run made of what it read

    def get_fields(self, request, obj=None):
        if obj is not None and _drew_on_unreadable(request, obj.pk):
            return [
                f.replace("_masked", "_hidden") if f in self._FROM_READS else f for f in self.fields
            ]
        return self.fields

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    def get_inlines(self, request, obj):
        if obj is not None and _drew_on_unreadable(request, obj.pk):
            return [HiddenRunStepInline]
        return self.inlines


# Held answers: governance's page, with the answers drawn from a knowledge base the viewer may
# not read hidden (governance cannot ask which those are: it sits below agents).
admin.site.unregister(Escalation)


@admin.register(Escalation)
class EscalationAdmin(governance_admin.EscalationAdmin):
    answer_hidden = _hidden("answer")
    citations_hidden = _hidden("citations")
    released_answer_hidden = _hidden("released_answer")
    _FROM_READS = ("answer_masked", "citations_masked", "released_answer_masked")

    def get_fields(self, request, obj=None):
        if obj is not None and _drew_on_unreadable(request, obj.run_id):
            return [
                f.replace("_masked", "_hidden") if f in self._FROM_READS else f for f in self.fields
            ]
        return self.fields

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.action(description="Release the selected answers as they are")
    def release(self, request, queryset):
        pending = queryset.filter(status="pending")
        hidden = unreadable_sources(request.user, set(pending.values_list("run_id", flat=True)))[0]
        for item in pending.filter(run_id__in=hidden):
            self.message_user(request, f"{item}: {UNREAD_RELEASE}", messages.ERROR)
        governance_admin.EscalationAdmin.release(self, request, pending.exclude(run_id__in=hidden))


# Feedback on answers (agents.feedback): read here by the agents' owners, written by its service.
from agents.evaluation.console import add_to_evaluation_set, owns_an_agent  # noqa: E402 - registers
from agents.models import Feedback  # noqa: E402 - beside its admin


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    """What people said of the answers of the agents the viewer owns (may change): a rating and
    a comment, personal data in it as the audit trail keeps it."""

    list_display = ("id", "rating", "agent", "run_link", "author", "comment_preview", "updated_at")
    list_filter = ("rating", ("run__agent", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("run__agent", "author")
    date_hierarchy = "updated_at"
    ordering = ("-updated_at",)
    fields = readonly_fields = (
        "run_link",
        "agent",
        "author",
        "rating",
        "comment_masked",
        "created_at",
        "updated_at",
    )
    comment_masked = _masked("comment")
    actions = [add_to_evaluation_set]

    def has_evaluate_permission(self, request) -> bool:
        """The "Add to an evaluation set" action: for the owners of an agent (its sets')."""
        return owns_an_agent(request)

    def get_urls(self):
        from django.urls import path

        return [
            path(
                "<int:pk>/add-to-evaluation-set/",
                self.admin_site.admin_view(self.add_to_set_view),
                name="agents_feedback_add_to_set",
            ),
            *super().get_urls(),
        ]

    def add_to_set_view(self, request, pk: int):
        """The action for one feedback (linked from the run's trace, for the agent's owners)."""
        from django.shortcuts import redirect

        found = self.get_queryset(request).filter(pk=pk)
        if not (self.has_evaluate_permission(request) and found.exists()):
            # As the change page answers for a missing one (django-stubs omits the method).
            return self._get_obj_does_not_exist_redirect(request, self.opts, str(pk))  # type: ignore[attr-defined]
        answer = add_to_evaluation_set(self, request, found)
        return answer or redirect("admin:agents_feedback_changelist")

    def get_queryset(self, request):
        from agents.feedback import feedback_agents

        owned = feedback_agents(request.user)
        return super().get_queryset(request).filter(run__agent__in=owned)

    def has_view_permission(self, request, obj=None) -> bool:
        from agents.feedback import feedback_agents, may_read_feedback

        if obj is not None:
            return may_read_feedback(request.user, obj.run.agent_id)
        # Asked each time the admin lists its apps (the index, the navigation): once a request.
        if not hasattr(request, "_feedback_visible"):
            user = request.user
            # The model-wide permissions need no query beyond the user's cached ones.
            visible = user.is_staff and (
                user.has_perm("agents.view_feedback")
                or user.has_perm("agents.change_agent")
                or feedback_agents(user).exists()
            )
            request._feedback_visible = visible
        return request._feedback_visible

    def has_module_permission(self, request) -> bool:
        return self.has_view_permission(request)

    @admin.display(description="agent", ordering="run__agent__name")
    def agent(self, obj) -> str:
        return obj.run.subject

    @admin.display(description="run", ordering="run_id")
    def run_link(self, obj):
        from django.urls import reverse
        from django.utils.html import format_html

        return format_html(
            '<a href="{}">run {}</a>', reverse("run-trace", args=[obj.run_id]), obj.run_id
        )

    @admin.display(description="comment")
    def comment_preview(self, obj) -> str:
        shown = _masked("comment")(self, obj)
        return shown if len(shown) <= 80 else shown[:79] + "…"
