"""Feedback on answers through the API: the asker rates a run's answer (up or down, with an
optional comment) and may change it; the agent's owners list what people said, by agent and
rating. Both go through agents.feedback: the run's one access check for rating, its owners'
rule for reading, an audited write."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.feedback import feedback_agents, feedback_record, feedback_visible_to
from agents.models import FEEDBACK_COMMENT_LENGTH, Feedback, Rating
from agents.selectors import access_run
from audit.pii import as_seen_by
from governance.access import NoAccess
from integrations.api.auth import HasScope


class FeedbackRequest(serializers.Serializer):
    rating = serializers.ChoiceField(choices=Rating.choices)
    comment = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=FEEDBACK_COMMENT_LENGTH,
        help_text="Optional; left out, the comment given before stays. Seen by the agent's "
        "owners (personal data in it as the audit trail keeps it, a keyed hash).",
    )


class FeedbackSerializer(serializers.ModelSerializer):
    run = serializers.IntegerField(source="run_id", read_only=True)
    agent = serializers.SerializerMethodField(help_text="The slug of the agent that answered.")
    author = serializers.SerializerMethodField(help_text="The username of who rated it.")
    comment = serializers.SerializerMethodField(
        help_text="As its author wrote it; to anyone else, personal data in it as a keyed hash."
    )

    class Meta:
        model = Feedback
        fields = ["id", "run", "agent", "author", "rating", "comment", "created_at", "updated_at"]

    def get_agent(self, feedback) -> str | None:
        agent = feedback.run.agent
        return agent.slug if agent is not None else None

    def get_author(self, feedback) -> str:
        return feedback.author.get_username()

    def get_comment(self, feedback) -> str:
        viewer = self.context["request"].user.pk
        return as_seen_by(feedback.comment, viewer_id=viewer, owner_id=feedback.author_id)


NOT_RATED = "no feedback of yours on this run"
# Rating is acting on a run (as starting one is); reading it is reading runs.
SCOPES = {"POST": ["agents:run"], "PUT": ["agents:run"], "*": ["runs:read"]}


@extend_schema(tags=["feedback"])
class RunFeedback(APIView):
    permission_classes = [HasScope]
    required_scopes = SCOPES

    @extend_schema(
        summary="Your feedback on one of your runs (scope runs:read)",
        description="404 when the run is not yours, or you have not rated it.",
        responses={200: FeedbackSerializer},
    )
    def get(self, request, pk: int):
        # One answer for a run that is not yours, a missing one, and one you have not rated.
        try:
            run = access_run(request.user, pk)
        except NoAccess:
            raise exceptions.NotFound(NOT_RATED) from None
        found = feedback_visible_to(request.user).filter(run=run, author=request.user).first()
        if found is None:
            raise exceptions.NotFound(NOT_RATED)
        return Response(FeedbackSerializer(found, context={"request": request}).data)

    @extend_schema(
        summary="Rate the answer of one of your runs (scope agents:run)",
        description="Up or down, with an optional comment; one per person per run: a second "
        "call changes it (201 when made, 200 when changed). Only a run that answered "
        "(`succeeded`) can be rated: any other is a 409 problem (`conflict`); a run that is not "
        "yours is a 404 (`not-found`), a bad rating or comment a 400 (`invalid`). Audited as "
        "`run.feedback`.",
        request=FeedbackRequest,
        responses={200: FeedbackSerializer, 201: FeedbackSerializer},
    )
    def post(self, request, pk: int):
        access_run(request.user, pk)  # not yours: 404, whatever the body says
        body = FeedbackRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        had = Feedback.objects.filter(run_id=pk, author=request.user).exists()
        feedback = feedback_record(
            actor=request.user, run_id=pk, rating=data["rating"], comment=data.get("comment")
        )
        shown = FeedbackSerializer(feedback, context={"request": request}).data
        return Response(shown, status=200 if had else 201)

    @extend_schema(
        summary="Rate the answer of one of your runs, or change your rating (scope agents:run)",
        description="As POST.",
        request=FeedbackRequest,
        responses={200: FeedbackSerializer, 201: FeedbackSerializer},
    )
    def put(self, request, pk: int):
        return self.post(request, pk)


@extend_schema(
    summary="Feedback on the answers of the agents you own (scope runs:read)",
    description="Newest first: on the runs of the agents you may change (a governance admin: "
    "all), and your own. `agent` narrows it to one agent (one you do not own is a 404), "
    "`rating` to up or down.",
    tags=["feedback"],
    parameters=[
        OpenApiParameter("agent", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False),
        OpenApiParameter(
            "rating", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False, enum=Rating.values
        ),
    ],
)
class FeedbackList(generics.ListAPIView):
    serializer_class = FeedbackSerializer
    permission_classes = [HasScope]
    required_scope = "runs:read"

    def get_queryset(self) -> Any:
        user = self.request.user
        params = self.request.query_params
        found = feedback_visible_to(user)
        if (slug := params.get("agent")) is not None:
            agent = feedback_agents(user).filter(slug=slug[:100]).first()
            if agent is None:
                raise exceptions.NotFound("no such agent")
            found = found.filter(run__agent=agent)
        if (rating := params.get("rating")) is not None:
            if rating not in Rating.values:
                raise exceptions.ValidationError({"rating": ["“up” or “down”"]})
            found = found.filter(rating=rating)
        return found
