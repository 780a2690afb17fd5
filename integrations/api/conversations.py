"""Conversations: the caller's own threads, with their messages and runs."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, prefetch_related_objects
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics, serializers

from agents.models import Conversation, Message, MessageRole, Run
from agents.selectors import access_conversation, conversations_of
from governance.access import NoAccess
from integrations.api.auth import HasScope


class ConversationSerializer(serializers.ModelSerializer):
    agent: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = Conversation
        fields = ["id", "agent", "title", "created_at", "updated_at"]


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "role", "content", "run", "created_at"]


class ConversationRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = Run
        fields = ["id", "state", "created_at", "finished_at"]


class ConversationDetailSerializer(ConversationSerializer):
    messages = MessageSerializer(many=True, read_only=True)
    runs = ConversationRunSerializer(many=True, read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "messages", "runs"]


@extend_schema(
    summary="The caller's own conversations, newest first (scope runs:read)", tags=["conversations"]
)
class ConversationList(generics.ListAPIView):
    serializer_class = ConversationSerializer
    permission_classes = [HasScope]
    required_scope = "runs:read"

    def get_queryset(self):
        return conversations_of(self.request.user)


@extend_schema(
    summary="One of the caller's conversations: what the user and the agent said, and its runs "
    "(scope runs:read; someone else's is a 404 like a missing one)",
    tags=["conversations"],
)
class ConversationDetail(generics.RetrieveAPIView):
    serializer_class = ConversationDetailSerializer
    permission_classes = [HasScope]
    required_scope = "runs:read"

    def get_object(self):
        try:
            conversation = access_conversation(self.request.user, self.kwargs["pk"])
        except NoAccess:
            raise exceptions.NotFound("no such conversation") from None
        # What the chat shows: the user's and the agent's words, not tool traffic.
        spoken = Message.objects.filter(role__in=[MessageRole.USER, MessageRole.ASSISTANT])
        prefetch_related_objects(
            [conversation],
            Prefetch("messages", queryset=spoken.order_by("id")),
            Prefetch("runs", queryset=Run.objects.order_by("id")),
        )
        return conversation
