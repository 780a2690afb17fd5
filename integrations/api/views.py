"""API v1 endpoints."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, generics, serializers

from agents.models import Agent, Run, RunStep, StepKind
from agents.selectors import access_run, agents_usable_by
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
