"""API v1 endpoints."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, generics, serializers

from agents.models import Agent, AgentVersion, Run, RunStep, StepKind
from agents.selectors import access_agent_by_slug, access_run, agents_usable_by
from governance.access import NoAccess
from governance.guardrails.output import scan as output_scan
from integrations.api.auth import HasScope
from integrations.api.problems import PROBLEMS


class AgentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Agent
        fields = ["slug", "name", "description"]


@extend_schema(summary="The agents the caller may use", tags=["agents"])
class AgentList(generics.ListAPIView):
    serializer_class = AgentSerializer
    permission_classes = [HasScope]
    required_scope = "agents:run"

    def get_queryset(self):
        return agents_usable_by(self.request.user)


CHANGES_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "field": {"type": "string"},
            "label": {"type": "string"},
            "before": {"description": "null in the first version"},
            "after": {},
        },
    },
}


class VersionSerializer(serializers.ModelSerializer):
    live = serializers.SerializerMethodField(
        help_text="Whether it serves the agent's runs now (a release may give some "
        "conversations another version)."
    )
    rollback_of = serializers.SerializerMethodField(
        help_text="The number of the version it restored, if it is a rollback."
    )
    changes = serializers.SerializerMethodField(
        help_text="What changed against the version before, in people's words (tools, "
        "knowledge bases, routes and agents by name). The system prompt's text only for "
        "callers who may change the agent; for others its before and after are null."
    )

    class Meta:
        model = AgentVersion
        fields = ["number", "created_at", "reason", "live", "rollback_of", "changes"]

    def get_live(self, version) -> bool:
        return bool(version.pk == self.context["agent"].live_version_id)

    def get_rollback_of(self, version) -> int | None:
        return version.rollback_of.number if version.rollback_of_id else None

    @extend_schema_field(CHANGES_SCHEMA)
    def get_changes(self, version) -> list[dict]:
        if self.context["sees_prompt"]:
            return list(version.changes)
        return [
            {**c, "before": None, "after": None} if c["field"] == "system_prompt" else c
            for c in version.changes
        ]


@extend_schema(
    summary="The versions of an agent the caller may use, the newest first",
    description="Every change to what the agent does is a version; `live` marks the one that "
    "serves its runs. A missing agent and one the caller may not use are the same 404.",
    tags=["agents"],
)
class AgentVersionList(generics.ListAPIView):
    serializer_class = VersionSerializer
    permission_classes = [HasScope]
    required_scope = "agents:run"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular's schema
            return AgentVersion.objects.none()
        return AgentVersion.objects.filter(agent=self.agent).select_related("rollback_of")

    def get_serializer_context(self):
        if getattr(self, "swagger_fake_view", False):
            return super().get_serializer_context()
        user = self.request.user
        sees = user.has_perm("agents.change_agent") or user.has_perm(
            "agents.change_agent", self.agent
        )
        return {**super().get_serializer_context(), "agent": self.agent, "sees_prompt": sees}

    def list(self, request, *args, **kwargs):
        try:
            self.agent = access_agent_by_slug(request.user, kwargs["slug"])
        except NoAccess:
            raise exceptions.NotFound("no such agent") from None
        return super().list(request, *args, **kwargs)


class StepSerializer(serializers.ModelSerializer):
    tokens = serializers.SerializerMethodField()
    summary = serializers.SerializerMethodField()

    class Meta:
        model = RunStep
        fields = [
            "index",
            "kind",
            "status",
            "summary",
            "started_at",
            "finished_at",
            "tokens",
            "cost",
            "deployment",
        ]

    def get_tokens(self, step) -> int:
        return step.prompt_tokens + step.completion_tokens

    def get_summary(self, step) -> str:
        output = step.output or {}
        if step.kind == StepKind.MODEL:
            calls = [c["name"] for c in output.get("tool_calls") or []]
            return f"calls {', '.join(calls)}" if calls else "answers"
        if step.kind == StepKind.TOOL:
            name = step.input.get("call", {}).get("name", "")
            return f"{name}: {output['error']}" if output.get("error") else f"{name}: ok"
        if step.kind == StepKind.RETRIEVAL:
            return f"{len(output.get('passages', []))} passages"
        if step.kind == StepKind.APPROVAL:
            return f"approval request {output.get('approval')}"
        if step.kind == StepKind.DELEGATION:
            return f"asked {output.get('agent', '')}: run {output.get('run')}"
        return step.kind


class RunSerializer(serializers.ModelSerializer):
    agent: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug",
        read_only=True,
        allow_null=True,
        help_text="null: an MCP client's call of `tool`",
    )
    tool: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name",
        read_only=True,
        allow_null=True,
        help_text="The tool an MCP client called (kind mcp); null for an agent's run.",
    )
    prompt_tokens = serializers.IntegerField(read_only=True)
    completion_tokens = serializers.IntegerField(read_only=True)
    steps = StepSerializer(many=True, read_only=True)
    answer_findings = serializers.SerializerMethodField(
        help_text="Links and images in the answer whose URLs carry data out (personal data, "
        "a secret, an encoded value): Warden's pages render them inert; the answer here is "
        "the text as the model wrote it, so a client that renders it should drop them."
    )
    version = serializers.SerializerMethodField(
        help_text="The number of the agent's version that served the run (its settings: "
        "GET /api/v1/agents/{slug}/versions); null for an MCP client's call of a tool."
    )
    trace_id = serializers.SerializerMethodField(
        help_text="The run's trace in the OpenTelemetry backend (32 hex digits; the caller's "
        "own when it sent a traceparent), or null when tracing is off."
    )

    class Meta:
        model = Run
        fields = [
            "id",
            "kind",
            "agent",
            "version",
            "tool",
            "parent",
            "client",
            "conversation",
            "state",
            "input",
            "answer",
            "citations",
            "confidence",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "steps",
            "answer_findings",
            "trace_id",
        ]

    def get_version(self, run) -> int | None:
        return run.version.number if run.version_id else None

    def get_trace_id(self, run) -> str | None:
        return run.trace_id or None

    @extend_schema_field(
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "guardrail": {"type": "string"},
                    "host": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        }
    )
    def get_answer_findings(self, run) -> list[dict]:
        return [finding.as_dict() for finding in output_scan(run.answer or "")]


@extend_schema(summary="A run: its state, steps, answer and what it cost", tags=["runs"])
class RunDetail(generics.RetrieveAPIView):
    serializer_class = RunSerializer
    permission_classes = [HasScope]
    required_scope = "runs:read"

    def get_object(self):
        try:
            return access_run(self.request.user, self.kwargs["pk"])  # the caller's own runs
        except NoAccess:
            raise exceptions.NotFound("no such run") from None


def problem_type(request: HttpRequest, slug: str) -> HttpResponse:
    """What a problem type means: the page its `type` URI points at."""
    if slug not in PROBLEMS:
        raise Http404("no such problem type")
    title, meaning = PROBLEMS[slug]
    return render(request, "api/problem.html", {"slug": slug, "title": title, "meaning": meaning})
