"""The audit trail: events page by page in chain order, and the whole filtered trail streamed
as JSON lines with the chain fields, which `python3 audit/chain.py` verifies offline."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.views import APIView

from audit import chain
from audit.models import AuditEvent
from audit.selectors import EventFilter, audit_export_lines, may_view_audit
from audit.streaming import stream_lines
from integrations.api.auth import HasScope
from integrations.api.pagination import Cursor

SCOPE = "audit:read"


class AuditFilter(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="From this time (inclusive).")
    until = serializers.DateTimeField(required=False, help_text="Before this time.")
    actor = serializers.CharField(
        required=False, max_length=200, help_text="user, user:ID, system, or a username."
    )
    action = serializers.CharField(
        required=False, max_length=100, help_text="An action, or a prefix such as run.*"
    )
    target = serializers.CharField(
        required=False, max_length=200, help_text="TYPE or TYPE:ID, such as auth.user:3."
    )
    run = serializers.CharField(required=False, max_length=64, help_text="A run id.")

    def event_filter(self) -> EventFilter:
        self.is_valid(raise_exception=True)
        data = self.validated_data
        texts = {k: data.get(k, "").strip() for k in ("actor", "action", "target", "run")}
        return EventFilter(since=data.get("since"), until=data.get("until"), **texts)


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = list(chain.CSV_COLUMNS)

    def to_representation(self, event) -> dict:
        return chain.export_row(event.as_chain_dict())  # exactly as hashed


def _check(request) -> None:
    if not may_view_audit(request.user):
        raise exceptions.PermissionDenied("the account may not view the audit trail")


class ChainOrder(Cursor):
    ordering = "sequence"  # oldest first: the next page's cursor also finds later events


@extend_schema(
    summary="Audit events in chain order, filtered (scope audit:read and the "
    "audit.view_auditevent permission)",
    tags=["audit"],
    parameters=[AuditFilter],
)
class AuditEventList(generics.ListAPIView):
    serializer_class = AuditEventSerializer
    permission_classes = [HasScope]
    required_scope = SCOPE
    pagination_class = ChainOrder

    def get_queryset(self):
        _check(self.request)
        filters = AuditFilter(data=self.request.query_params).event_filter()
        return filters.apply(AuditEvent.objects.all())


class NDJSONRenderer(BaseRenderer):
    media_type = "application/x-ndjson"
    format = "ndjson"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return JSONRenderer().render(data)  # a problem document; the export streams itself


@extend_schema(
    summary="Export the filtered audit trail as JSON lines, streamed, every chain field and "
    "hash included (scope audit:read and the audit.view_auditevent permission); verify it "
    "offline with `python3 audit/chain.py FILE` (--complete when unfiltered)",
    tags=["audit"],
    parameters=[AuditFilter],
    responses={(200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR)},
)
class AuditExport(APIView):
    permission_classes = [HasScope]
    required_scope = SCOPE
    renderer_classes = [JSONRenderer, NDJSONRenderer]

    def get(self, request):
        _check(request)
        filters = AuditFilter(data=request.query_params).event_filter()
        lines = audit_export_lines(filters=filters, fmt="jsonl")
        response = StreamingHttpResponse(stream_lines(lines), content_type="application/x-ndjson")
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.jsonl"'
        return response
