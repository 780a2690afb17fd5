from django.contrib import admin

from agents.knowledge import admin as knowledge_admin  # noqa: F401 - registers its models
from agents.models import Agent, Deployment, ModelRoute, Run, RunStep
from governance.admin import GovernedAdminMixin


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
        "input",
        "output",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

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
    readonly_fields = [f.name for f in Run._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
