"""API v1 endpoints."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers

from agents.models import Agent
from portal.api.auth import HasScope
from portal.api.problems import PROBLEMS


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
        return Agent.objects.restrict(self.request.user, "use").filter(enabled=True)


def problem_type(request: HttpRequest, slug: str) -> HttpResponse:
    """What a problem type means: the page its `type` URI points at."""
    if slug not in PROBLEMS:
        raise Http404("no such problem type")
    title, meaning = PROBLEMS[slug]
    return render(request, "api/problem.html", {"slug": slug, "title": title, "meaning": meaning})
