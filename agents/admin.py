from django.contrib import admin

from agents.knowledge import admin as knowledge_admin  # noqa: F401 - registers its models
from agents.models import Agent, Deployment, ModelRoute, Run, RunStep
from governance.admin import GovernedAdminMixin
from governance.admin import personal_field as _masked

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
class AgentAdmin(GovernedAdminMixin, admin.ModelAdmin):
    list_display = ("name", "slug", "route", "enabled", "max_steps", "confidence_threshold")
    list_filter = ("enabled", "route")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("tools", "knowledge_bases", "approver_groups")


class RunStepInline(admin.TabularInline):
    model = RunStep
    extra = 0
    can_delete = False
    fields = (
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


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    """Runs are the orchestrator's record: readable here, changed only by their services."""

    list_display = (
        "id",
        "agent",
        "actor",
        "state",
        "created_at",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    )
    list_filter = ("state", "agent")
    search_fields = ("id", "input", "answer")
    inlines = [RunStepInline]
    fields = readonly_fields = [
        f"{f.name}_masked" if f.name in _PERSONAL else f.name for f in Run._meta.fields
    ]
    input_masked = _masked("input")
    answer_masked = _masked("answer")
    citations_masked = _masked("citations")
    error_masked = _masked("error")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
