"""Tools: the ones the caller may use, and, for governance admins, creating and changing them
through the same validation as the admin (a valid JSON Schema, the kind's configuration)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, generics, serializers
from rest_framework.response import Response

from governance.access import NoAccess, access_tool
from governance.models import Action
from integrations.api.auth import HasScope
from integrations.api.parsers import too_deep, unstorable
from tools.models import Tool
from tools.schemas import parameters_problem
from tools.services import TOOL_FIELDS, tool_create, tool_update

# Reading the registry takes admin:read; writing it admin:write, and the account must hold the
# model permission (tools.add_tool, tools.change_tool): a leaked read-only token writes nothing.
SCOPES = {"POST": ["admin:write"], "PATCH": ["admin:write"], "*": ["admin:read"]}


class ToolSerializer(serializers.ModelSerializer):
    requires_approval = serializers.BooleanField(read_only=True)

    class Meta:
        model = Tool
        fields = [
            "id",
            *TOOL_FIELDS,
            *("requires_approval", "version", "created_at", "updated_at"),
        ]
        read_only_fields = ["version", "created_at", "updated_at"]
        extra_kwargs = {
            "config": {"write_only": True},  # URLs, secret names: the admin's to read
            "kind": {"required": True},
            "description": {"required": True},
        }

    def validate_parameters(self, value):
        _storable(value)
        if problem := parameters_problem(value):
            raise serializers.ValidationError(problem)
        return value

    def validate_config(self, value):
        _storable(value)
        return value


def _storable(value) -> None:
    if too_deep(value):
        raise serializers.ValidationError("nested too deeply")
    if problem := unstorable(value):
        raise serializers.ValidationError(problem)


def _invalid(exc: DjangoValidationError) -> exceptions.ValidationError:
    if hasattr(exc, "error_dict"):
        return exceptions.ValidationError(exc.message_dict)
    return exceptions.ValidationError({"non_field_errors": exc.messages})


def _require(user, permission: str) -> None:
    if not user.has_perm(permission):
        raise exceptions.PermissionDenied(f"the account lacks the permission {permission!r}")


@extend_schema_view(
    get=extend_schema(summary="The tools the caller may use (scope admin:read)"),
    post=extend_schema(
        summary="Register a tool (scope admin:write and the tools.add_tool permission): its "
        "parameters must be a valid JSON Schema of an object, its config valid for its kind; "
        "audited as tool.created"
    ),
)
@extend_schema(tags=["tools"])
class ToolList(generics.ListCreateAPIView):
    serializer_class = ToolSerializer
    permission_classes = [HasScope]
    required_scopes = SCOPES

    def get_queryset(self):
        return Tool.objects.restrict(self.request.user, Action.USE)

    def create(self, request, *args, **kwargs):
        _require(request.user, "tools.add_tool")
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            tool = tool_create(actor=request.user, fields=serializer.validated_data)
        except DjangoValidationError as exc:
            raise _invalid(exc) from None
        headers = {"Location": f"/api/v1/tools/{tool.pk}"}
        return Response(self.get_serializer(tool).data, status=201, headers=headers)


@extend_schema_view(
    get=extend_schema(
        summary="A tool the caller may use (scope admin:read; any other is a 404)",
    ),
    patch=extend_schema(
        summary="Change a tool (scope admin:write and the tools.change_tool permission), "
        "validated as on creation; a Python or MCP tool's kind and parameters are its code's or "
        "its server's; audited as tool.changed with the fields that changed"
    ),
)
@extend_schema(tags=["tools"])
class ToolDetail(generics.RetrieveUpdateAPIView):
    serializer_class = ToolSerializer
    permission_classes = [HasScope]
    required_scopes = SCOPES
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self):
        try:
            return access_tool(self.request.user, self.kwargs["pk"])
        except NoAccess:
            raise exceptions.NotFound("no such tool") from None

    def update(self, request, *args, **kwargs):
        tool = self.get_object()
        _require(request.user, "tools.change_tool")
        serializer = self.get_serializer(tool, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        try:
            tool = tool_update(tool=tool, actor=request.user, fields=serializer.validated_data)
        except DjangoValidationError as exc:
            raise _invalid(exc) from None
        return Response(self.get_serializer(tool).data)
