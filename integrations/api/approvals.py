"""Approvals of tool calls and held answers, as the inbox decides them: the same access check
(`reviewable`) and the same services (four-eyes, expiry, audit, the run requeued)."""

from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, Subquery
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import Agent, Run
from agents.selectors import HIDDEN, UNREAD_RELEASE, unreadable_sources
from audit.pii import as_seen_by
from governance.approvals import (
    ApprovalError,
    approval_decide,
    approvals_for,
    escalation_decide,
    escalations_for,
    reviewable,
)
from governance.models import ApprovalRequest, Escalation
from governance.policy import reason_text
from integrations.api.auth import HasScope
from integrations.api.parsers import too_deep, unstorable
from integrations.api.problems import Conflict

SCOPE = "approvals:write"


def _with_agent_slug(items):
    slug = Agent.objects.filter(pk=OuterRef("agent_id")).values("slug")[:1]
    owner = Run.objects.filter(pk=OuterRef("run_id")).values("actor_id")[:1]
    return items.select_related("requested_by", "decided_by").annotate(
        agent_slug=Subquery(slug), owner_id=Subquery(owner)
    )


class _Decided(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent_slug", read_only=True)
    run = serializers.IntegerField(source="run_id", read_only=True)
    requested_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    decided_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    personal: tuple[str, ...] = ()  # the run's data: hashed for anyone but the run's owner

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        viewer = request.user.pk if request is not None else None
        owner = getattr(instance, "owner_id", None)
        for name in self.personal:
            data[name] = as_seen_by(data[name], viewer_id=viewer, owner_id=owner)
        return data


class ApprovalSerializer(_Decided):
    tool = serializers.CharField(source="tool_name", read_only=True)
    reasons = serializers.SerializerMethodField()
    personal = ("arguments", "approved_arguments")

    class Meta:
        model = ApprovalRequest
        fields = [
            *("id", "run", "agent", "tool", "tool_version", "arguments", "reasons"),
            *("requested_by", "status", "created_at", "expires_at"),
            *("approved_arguments", "decided_by", "decided_at", "comment"),
        ]

    def get_reasons(self, item) -> list[str]:
        return [reason_text(r) for r in item.reasons or []]


class EscalationSerializer(_Decided):
    personal = ("question", "answer", "citations", "released_answer")
    hidden = serializers.SerializerMethodField(
        help_text="The answer draws on a knowledge base the caller may not read: `answer` and "
        "`released_answer` say so instead, `citations` is empty, and the caller may reject "
        "it, not release it."
    )

    class Meta:
        model = Escalation
        fields = [
            *("id", "run", "agent", "question", "answer", "citations", "confidence"),
            *("threshold", "requested_by", "status", "created_at"),
            *("released_answer", "decided_by", "decided_at", "comment", "hidden"),
        ]

    def get_hidden(self, item) -> bool:
        return item.run_id in self.context.get("hidden_runs", ())

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if data["hidden"]:  # the one rule of the run trace (agents.selectors)
            data["answer"], data["citations"] = HIDDEN, []
            data["released_answer"] = HIDDEN if data["released_answer"] else ""
        return data


def _hidden_runs(user, items) -> set[int]:
    """The runs of `items` whose answers `user` may not see (one query for a page of them)."""
    return unreadable_sources(user, {item.run_id for item in items})[0]


class ApprovalDecision(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approve", "reject"])
    comment = serializers.CharField(required=False, default="", allow_blank=True, max_length=4000)
    arguments = serializers.JSONField(
        required=False,
        help_text="Approve these arguments instead of the requested ones (checked against the "
        "tool's JSON Schema). Personal values are shown to reviewers as keyed hashes "
        "([EMAIL:…]): a hash left where it was runs with the real value; one moved elsewhere "
        "is refused.",
    )

    def validate_arguments(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("the edited arguments must be a JSON object")
        if too_deep(value):
            raise serializers.ValidationError("the edited arguments are nested too deeply")
        if problem := unstorable(value):
            raise serializers.ValidationError(f"the edited arguments cannot be kept: {problem}")
        return value


class EscalationDecision(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["release", "reject"])
    comment = serializers.CharField(required=False, default="", allow_blank=True, max_length=4000)
    answer = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=100_000,
        help_text="Release this answer instead of the held one. A keyed hash ([PHONE:…]) of "
        "a value in the held answer or the question is released as the real value.",
    )


def _refused(item, exc: ApprovalError, field: str):
    """A decision the service refused: a conflict if the item is no longer pending (decided,
    expired, withdrawn), else the input was wrong."""
    item.refresh_from_db(fields=["status"])
    if item.status != "pending":
        return Conflict(str(exc))
    return exceptions.ValidationError({field: [str(exc)]})


@extend_schema(
    summary="Pending tool-call approvals the caller may decide, newest first (scope "
    "approvals:write)",
    tags=["approvals"],
)
class ApprovalList(generics.ListAPIView):
    serializer_class = ApprovalSerializer
    permission_classes = [HasScope]
    required_scope = SCOPE

    def get_queryset(self):
        return _with_agent_slug(approvals_for(self.request.user))


@extend_schema(
    summary="A tool-call approval the caller may decide, in any state (scope approvals:write; "
    "one the caller may not review is a 404)",
    tags=["approvals"],
)
class ApprovalDetail(generics.RetrieveAPIView):
    serializer_class = ApprovalSerializer
    permission_classes = [HasScope]
    required_scope = SCOPE

    def get_object(self):
        item = _with_agent_slug(reviewable(ApprovalRequest, self.request.user))
        item = item.filter(pk=self.kwargs["pk"]).first()
        if item is None:
            raise exceptions.NotFound("no such approval request")
        return item


@extend_schema(
    summary="Approve (optionally with edited arguments) or reject a tool call (scope "
    "approvals:write): the run continues with exactly the approved arguments; one the caller "
    "may not review is a 404, an already decided or expired one a 409",
    tags=["approvals"],
    request=ApprovalDecision,
    responses=ApprovalSerializer,
)
class ApprovalDecide(APIView):
    permission_classes = [HasScope]
    required_scope = SCOPE

    def post(self, request, pk: int):
        item = reviewable(ApprovalRequest, request.user).filter(pk=pk).first()
        if item is None:
            raise exceptions.NotFound("no such approval request")
        decision = ApprovalDecision(data=request.data)
        decision.is_valid(raise_exception=True)
        typed = decision.validated_data
        try:
            approval_decide(
                approval_id=item.pk,
                decided_by=request.user,
                approve=typed["decision"] == "approve",
                arguments=typed.get("arguments") if typed["decision"] == "approve" else None,
                comment=typed["comment"],
            )
        except ApprovalError as exc:
            raise _refused(item, exc, "arguments") from None
        decided = _with_agent_slug(ApprovalRequest.objects.filter(pk=item.pk)).get()
        return Response(ApprovalSerializer(decided, context={"request": request}).data)


@extend_schema(
    summary="Pending held answers (low confidence) the caller may release or reject (scope "
    "approvals:write)",
    tags=["approvals"],
)
class EscalationList(generics.ListAPIView):
    serializer_class = EscalationSerializer
    permission_classes = [HasScope]
    required_scope = SCOPE

    def get_queryset(self):
        return _with_agent_slug(escalations_for(self.request.user))

    def get_serializer(self, *args, **kwargs):
        context = kwargs.setdefault("context", self.get_serializer_context())
        context["hidden_runs"] = _hidden_runs(self.request.user, args[0] if args else [])
        return self.get_serializer_class()(*args, **kwargs)


@extend_schema(
    summary="Release a held answer (as it was or edited) or reject it (scope approvals:write); "
    "one the caller may not review is a 404, an already decided one a 409, a release by a "
    "caller who may not read a knowledge base it draws on a 403",
    tags=["approvals"],
    request=EscalationDecision,
    responses=EscalationSerializer,
)
class EscalationDecide(APIView):
    permission_classes = [HasScope]
    required_scope = SCOPE

    def post(self, request, pk: int):
        item = reviewable(Escalation, request.user).filter(pk=pk).first()
        if item is None:
            raise exceptions.NotFound("no such held answer")
        decision = EscalationDecision(data=request.data)
        decision.is_valid(raise_exception=True)
        typed = decision.validated_data
        release = typed["decision"] == "release"
        hidden = _hidden_runs(request.user, [item])
        if release and hidden:
            raise exceptions.PermissionDenied(UNREAD_RELEASE)
        try:
            escalation_decide(
                escalation_id=item.pk,
                decided_by=request.user,
                release=release,
                answer=typed.get("answer") if release else None,
                comment=typed["comment"],
            )
        except ApprovalError as exc:
            raise _refused(item, exc, "answer") from None
        decided = _with_agent_slug(Escalation.objects.filter(pk=item.pk)).get()
        context = {"request": request, "hidden_runs": hidden}
        return Response(EscalationSerializer(decided, context=context).data)
