"""The answer cache (agents.answer_cache): the demo's help desk agent on the offline model,
answering from the handbook (every role reads it) and an IT runbook (only IT staff read it)."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from agents.answer_cache import (
    answer_scope,
    cached_answer_find,
    cached_answers_prune,
    may_match,
    normalised,
    question_hash,
)
from agents.knowledge.services import document_add, document_ingest
from agents.models import (
    Agent,
    AnswerCache,
    CachedAnswer,
    Conversation,
    Document,
    KnowledgeBase,
    Message,
    MessageRole,
    Run,
    RunState,
    RunStep,
    StepKind,
)
from agents.orchestrator import run_execute, runs_here
from agents.services import run_start
from agents.versions import version_record
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance.models import Action
from governance.services import access_grant
from ops.demo import demo_workspace_seed

pytestmark = pytest.mark.django_db

RUNBOOK = b"""# IT runbook

## Restarting the build server

Log in to the jump host, run `sudo systemctl restart buildd` on build-01 and watch the
dashboard until the queue drains. Tell the #builds channel before you restart it.

## Database failover

Promote the standby with `pg_ctl promote` on db-02, then move the service address with the
failover script. Page the on-call DBA first.
"""


@pytest.fixture
def desk(tmp_path):
    demo_workspace_seed(credentials_path=tmp_path / "logins.json")
    for document in Document.objects.filter(knowledge_base__slug="handbook"):
        document_ingest(document_id=document.pk)
    users = get_user_model().objects
    admin = users.get(username="admin")
    runbook = KnowledgeBase.objects.create(slug="it-runbook", name="IT runbook", owner=admin)
    staff = Group.objects.create(name="IT staff")
    access_grant(obj=runbook, holder=staff, action=Action.READ, actor=SYSTEM)
    document, _ = document_add(
        knowledge_base=runbook, actor=SYSTEM, name="runbook.md", data=RUNBOOK, enqueue=False
    )
    document_ingest(document_id=document.pk)
    agent = Agent.objects.get(slug="help-desk")
    agent.knowledge_bases.add(runbook)
    Agent.objects.filter(pk=agent.pk).update(answer_cache=AnswerCache.SIMILAR)
    agent.refresh_from_db()
    member = users.get(username="member")
    staffer = users.create_user("staffer", email="staffer@example.com")
    staffer.groups.add(*member.groups.all(), staff)
    colleague = users.create_user("colleague", email="colleague@example.com")
    colleague.groups.add(*member.groups.all())
    return agent, member, colleague, staffer, runbook


def ask(agent, user, text, conversation=None) -> Run:
    conversation = conversation or Conversation.objects.create(owner=user, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=user, input=text, stream=False)
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def model_step(run: Run) -> RunStep:
    return RunStep.objects.get(run=run, kind=StepKind.MODEL)


def test_a_paraphrase_by_someone_with_the_same_access_is_answered_from_the_cache(desk):
    agent, member, colleague, _, _ = desk

    first = ask(agent, member, "How do I reset my password?")
    again = ask(agent, colleague, "How can I reset my password?")

    assert first.state == again.state == RunState.SUCCEEDED
    assert "Forgot password" in first.answer
    assert first.prompt_tokens + first.completion_tokens > 0
    entry = CachedAnswer.objects.get()
    assert entry.version_id == first.version_id == again.version_id
    assert entry.tokens == first.prompt_tokens + first.completion_tokens
    assert entry.question == "How do I reset my password?"
    assert entry.documents == [first.citations[0]["document"]]
    # The paraphrase: no model call, nothing used, the same answer and citations.
    assert (again.prompt_tokens, again.completion_tokens, again.cost) == (0, 0, 0)
    assert again.answer == first.answer
    assert again.citations == first.citations
    assert again.confidence == first.confidence
    step = model_step(again)
    hit = step.output["answer_cache"]
    assert hit["entry"] == entry.pk
    assert hit["tier"] == "similar"
    assert hit["similarity"] >= settings.WARDEN_ANSWER_CACHE_SIMILARITY
    assert hit["tokens_saved"] == entry.tokens
    assert (step.prompt_tokens, step.completion_tokens, step.deployment) == (0, 0, "")
    # The conversation shows it as the agent's answer.
    shown = Message.objects.get(run=again, role=MessageRole.ASSISTANT)
    assert shown.content == first.answer
    entry.refresh_from_db()
    assert entry.hits == 1
    assert CachedAnswer.objects.count() == 1  # a hit is not kept again


def test_a_hit_is_audited_with_no_question_and_no_person_in_it(desk):
    agent, member, colleague, _, _ = desk
    ask(agent, member, "How do I reset my password?")

    again = ask(agent, colleague, "how do I reset my   password?")

    entry = CachedAnswer.objects.get()
    event = AuditEvent.objects.get(action="cache.hit")
    assert event.run == str(again.pk)
    assert json.loads(event.data) == {
        "step": 1,
        "entry": entry.pk,
        "tier": "exact",
        "similarity": 1.0,
        "tokens_saved": entry.tokens,
    }
    assert "password" not in str(event.data).lower()
    assert member.username not in str(event.data)


def test_no_answer_crosses_from_a_reader_of_the_runbook_to_a_non_reader(desk):
    agent, member, _, staffer, _ = desk

    staff_run = ask(agent, staffer, "How do I reset my password?")
    member_run = ask(agent, member, "How do I reset my password?")

    assert member_run.prompt_tokens > 0  # the model was asked: no hit
    assert "answer_cache" not in model_step(member_run).output
    assert not AuditEvent.objects.filter(action="cache.hit").exists()
    scopes = dict(CachedAnswer.objects.values_list("run_id", "scope"))
    assert len(set(scopes.values())) == 2
    assert scopes[member_run.pk] == answer_scope(
        knowledge_bases=[KnowledgeBase.objects.get(slug="handbook").pk],
        tools=sorted(agent.tools.values_list("pk", flat=True)),
        agents=[],
    )
    assert staff_run.state == RunState.SUCCEEDED


def test_no_answer_crosses_from_a_non_reader_to_a_reader_of_the_runbook(desk):
    agent, member, _, staffer, _ = desk

    ask(agent, member, "How long is the probation period?")
    staff_run = ask(agent, staffer, "How long is the probation period?")

    assert staff_run.prompt_tokens > 0
    assert not AuditEvent.objects.filter(action="cache.hit").exists()
    assert CachedAnswer.objects.count() == 2


def test_a_new_version_does_not_reuse_the_answers_of_the_one_before(desk):
    agent, member, colleague, _, _ = desk
    first = ask(agent, member, "How do I reset my password?")
    agent.system_prompt += " Be brief."
    agent.save(update_fields=["system_prompt"])
    version_record(agent=agent, actor=SYSTEM, reason="shorter answers")

    again = ask(agent, colleague, "How do I reset my password?")

    assert again.version_id != first.version_id
    assert again.prompt_tokens > 0
    assert not AuditEvent.objects.filter(action="cache.hit").exists()


def test_a_follow_up_in_a_conversation_is_never_answered_from_the_cache(desk):
    agent, member, colleague, _, _ = desk
    ask(agent, member, "How do I reset my password?")
    opened = ask(agent, colleague, "How long is the probation period?")

    follow_up = ask(agent, colleague, "How do I reset my password?", opened.conversation)

    assert follow_up.prompt_tokens > 0
    assert "answer_cache" not in model_step(follow_up).output
    assert not AuditEvent.objects.filter(action="cache.hit").exists()
    assert CachedAnswer.objects.count() == 2  # nor is a follow-up's answer kept


def test_a_changed_document_drops_the_answers_that_could_read_its_base(desk):
    agent, member, colleague, staffer, _runbook = desk
    ask(agent, member, "How do I reset my password?")
    ask(agent, staffer, "How do I reset my password?")
    faq = Document.objects.get(filename="it-helpdesk-faq.md")

    document_ingest(document_id=faq.pk)  # read again (changed: new passages)

    assert not CachedAnswer.objects.exists()
    again = ask(agent, colleague, "How do I reset my password?")
    assert again.prompt_tokens > 0
    assert not AuditEvent.objects.filter(action="cache.hit").exists()


def test_a_deleted_document_drops_only_the_answers_of_those_who_could_read_its_base(desk):
    agent, member, _, staffer, runbook = desk
    kept = ask(agent, member, "How do I reset my password?")
    ask(agent, staffer, "How do I reset my password?")

    runbook.documents.get().delete()

    assert list(CachedAnswer.objects.values_list("run_id", flat=True)) == [kept.pk]


def test_answers_that_called_a_tool_were_held_or_carry_personal_data_are_not_kept(desk):
    agent, member, _, _, _ = desk

    ticket = ask(agent, member, "What is the status of ticket 1?")
    held = ask(agent, member, "What is the boiling point of tungsten?")
    personal = ask(agent, member, "How do I reset my password? I am jane.doe@example.com")

    assert ticket.state == RunState.SUCCEEDED, ticket.error
    assert RunStep.objects.filter(run=ticket, kind=StepKind.TOOL).exists()
    assert held.state == RunState.AWAITING_REVIEW
    assert personal.state == RunState.SUCCEEDED
    assert not CachedAnswer.objects.exists()


def test_old_versions_answers_are_pruned_once_they_serve_no_run(desk):
    agent, member, colleague, _, _ = desk
    old = ask(agent, member, "How do I reset my password?")
    agent.system_prompt += " Be brief."
    agent.save(update_fields=["system_prompt"])
    version_record(agent=agent, actor=SYSTEM, reason="shorter answers")
    new = ask(agent, colleague, "How do I reset my password?")

    assert cached_answers_prune(idle=timedelta(hours=1)) == 0  # v1 served a run a moment ago
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert cached_answers_prune(idle=timedelta(hours=1)) == 1

    assert list(CachedAnswer.objects.values_list("run_id", flat=True)) == [new.pk]


def test_the_lookup_s_queries_are_pinned(desk, django_assert_num_queries):
    agent, member, _, _, _ = desk
    run = ask(agent, member, "How do I reset my password?")
    entry = CachedAnswer.objects.get()
    where = {"version_id": run.version_id, "scope": entry.scope, "mode": "similar"}
    asked, paraphrase = "How do I reset my password?", "How can I reset my password?"

    with django_assert_num_queries(1):  # the exact tier: one indexed query
        found, _ = cached_answer_find(**where, question=asked)
    assert found is not None
    assert found.exact
    # The similar tier: the exact one's, then the nearest by the HNSW index (its scan
    # settings, the query, in a savepoint of the test's transaction).
    with django_assert_num_queries(5):
        found, _ = cached_answer_find(**where, question=paraphrase)
    assert found is not None
    assert not found.exact
    with django_assert_num_queries(1):  # exact only: never embeds, never searches
        found, vector = cached_answer_find(**{**where, "mode": "exact"}, question=paraphrase)
    assert (found, vector) == (None, None)
    assert entry.question_hash == question_hash(" how do i RESET my password? ")


def test_an_agent_that_looks_up_similar_questions_runs_on_a_worker(desk):
    agent, member, _, _, _ = desk
    agent.tools.clear()
    agent.knowledge_bases.clear()
    agent.confidence_threshold = 0
    agent.save(update_fields=["confidence_threshold"])
    assert runs_here(agent, member) is False
    agent.answer_cache = AnswerCache.EXACT
    assert runs_here(agent, member) is True


def test_a_question_that_negates_or_numbers_the_kept_one_otherwise_is_never_a_similar_hit():
    birth = "How much parental leave do birth parents get?"
    assert not may_match(birth, "How much leave do non-birth parents get?")
    assert not may_match("Can I fly business class?", "Can't I fly business class?")
    assert not may_match("My flight was delayed 2 hours", "My flight was delayed 4 hours")
    assert not may_match("The printer on the 3rd floor?", "The printer on the 5th floor?")
    assert may_match(
        "How much parental leave do non-birth parents get?",
        "How much leave do non-birth parents get?",
    )
    assert may_match("How do I reset my password?", "How can I reset my password?")
    assert may_match("Why isn't my VPN connecting?", "Why is not my VPN connecting?")
    assert not may_match("Why isn't my VPN connecting?", "Why is my VPN connecting?")


@pytest.mark.parametrize(
    ("asked", "kept"),
    [
        ("What's the VPN's address?", "what is the VPN's address"),
        ("\u201cWhere\u2019s my badge?\u201d", "Where is my badge"),
        ("I can't log in, what now?!", "i cannot log in what now"),
        ("  HOW do I reset my password ", "how do i reset my password?"),
    ],
)
def test_the_exact_tier_ignores_case_spacing_contractions_and_punctuation(asked, kept):
    assert normalised(asked) == normalised(kept)
    assert question_hash(asked) == question_hash(kept)


@pytest.mark.parametrize(
    ("asked", "kept"),
    [
        ("Is the rate 3.5%?", "Is the rate 3.5?"),
        ("How much leave do non-birth parents get?", "How much leave do birth parents get?"),
        ("Can I fly business class?", "Can't I fly business class?"),
    ],
)
def test_the_exact_tier_keeps_what_changes_the_question(asked, kept):
    assert question_hash(asked) != question_hash(kept)
