"""The demo workspace's handbook: the offline demo agent answers from it, citing it."""

import pytest
from django.contrib.auth import get_user_model

from agents.knowledge.services import document_ingest
from agents.models import Agent, Chunk, Conversation, Document, DocumentStatus, Run, RunState
from agents.orchestrator import run_execute
from agents.services import run_start
from governance.models import Escalation
from ops.demo import demo_workspace_seed

pytestmark = pytest.mark.django_db


def execute(agent, user, text) -> Run:
    conversation = Conversation.objects.create(owner=user, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=user, input=text, stream=False)
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def test_the_demo_agent_answers_from_the_handbook_with_the_right_citation(tmp_path):
    demo_workspace_seed(credentials_path=tmp_path / "logins.json")
    for document in Document.objects.filter(knowledge_base__slug="handbook"):
        assert document_ingest(document_id=document.pk).status == DocumentStatus.READY
    member = get_user_model().objects.get(username="member")
    agent = Agent.objects.get(slug="help-desk")

    answered = execute(agent, member, "How many days of annual leave do I get?")
    unrelated = execute(agent, member, "What is the boiling point of tungsten?")

    assert answered.state == RunState.SUCCEEDED
    assert "25 days" in answered.answer
    cited = Document.objects.get(pk=answered.citations[0]["document"])
    assert cited.filename == "leave-policy.md"
    assert (
        answered.citations[0]["position"]
        == Chunk.objects.get(pk=answered.citations[0]["chunk"]).position
    )
    # Not grounded in anything: held for a reviewer, who can answer it, instead of shown.
    assert unrelated.state == RunState.AWAITING_REVIEW
    assert unrelated.answer == ""
    held = Escalation.objects.get(run_id=unrelated.pk)
    assert "I don't know" in held.answer
    assert held.citations == []
    assert held.confidence < agent.confidence_threshold
