"""The demo workspace's handbook: the offline demo agent answers from it, citing it."""

import json
from pathlib import Path

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


QUESTIONS = json.loads((Path(__file__).parent / "data" / "handbook_questions.json").read_text())


def _asked(agent, member, question: str) -> tuple[float, str, bool]:
    """(the offline model's confidence, its answer, whether it was held)."""
    run = execute(agent, member, question)
    held = Escalation.objects.filter(run_id=run.pk).first()
    if held is not None:
        return float(held.confidence), held.answer, True
    return float(run.confidence), run.answer, False


def test_the_offline_model_s_confidence_follows_the_handbook_s_support(tmp_path):
    """Answers the handbook supports are shown (at least 9 in 10, with the asked fact), and
    what it does not answer is held (at most 1 in 10 shown), on questions with known
    answers: the set the confidence was tuned on, and one it was not."""
    demo_workspace_seed(credentials_path=tmp_path / "logins.json")
    for document in Document.objects.filter(knowledge_base__slug="handbook"):
        document_ingest(document_id=document.pk)
    member = get_user_model().objects.get(username="member")
    agent = Agent.objects.get(slug="help-desk")
    agent.tools.clear()  # questions, not tasks
    threshold = float(agent.confidence_threshold)

    for split in ("tune", "check"):
        answerable = [(q, fact) for q, fact in QUESTIONS[split] if fact]
        unanswerable = [q for q, fact in QUESTIONS[split] if not fact]
        shown, missed = 0, []
        for question, fact in answerable:
            confidence, answer, held = _asked(agent, member, question)
            if not held and fact in answer:
                shown += 1
            else:
                missed.append((question, confidence, held, answer))
        leaked = []
        for question in unanswerable:
            confidence, answer, held = _asked(agent, member, question)
            if not held:
                leaked.append((question, confidence, answer))
        print(
            f"{split}: {shown}/{len(answerable)} answered and shown, "
            f"{len(leaked)}/{len(unanswerable)} unanswerable shown (threshold {threshold})"
        )
        assert shown >= 0.9 * len(answerable), (split, missed)
        assert len(leaked) <= 0.1 * len(unanswerable), (split, leaked)
