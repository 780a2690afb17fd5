"""Canary and A/B releases (agents.releases): who gets the candidate, the live metrics per
version, the judge's rollbacks and promotions, and their audit events and notices."""

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from agents.evaluation.services import evaluation_set_create
from agents.feedback import feedback_record
from agents.models import (
    Agent,
    AgentVersion,
    Conversation,
    Deployment,
    EvaluationRun,
    EvaluationSet,
    EvaluationState,
    ModelRoute,
    Release,
    ReleaseKind,
    ReleaseState,
    Run,
    RunState,
)
from agents.orchestrator import run_execute
from agents.releases import (
    NO_EVALUATION,
    ReleaseError,
    release_bucket,
    release_candidate,
    release_metrics,
    release_promote,
    release_rollback,
    release_start,
    release_stop,
    releases_judge,
)
from agents.services import run_start
from agents.versions import version_record, version_serving
from audit.models import AuditEvent
from tests.access import grant, grant_agent
from tests.model_server import Reply

pytestmark = pytest.mark.django_db


def _route(server, name: str) -> ModelRoute:
    route = ModelRoute.objects.create(name=f"{name}-{uuid.uuid4().hex[:6]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model=f"openai/{name}", api_base=server.base(name)
    )
    return route


@pytest.fixture
def owner(role_groups):
    from governance import roles

    user = get_user_model().objects.create_user(
        f"olga-{uuid.uuid4().hex[:6]}", email="olga@example.com", is_staff=True
    )
    user.groups.add(role_groups[roles.GOVERNANCE_ADMIN])
    return user


@pytest.fixture
def member():
    return get_user_model().objects.create_user(f"mia-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def agent(server, member, owner):
    """An agent whose live v1 answers on the `good` route; v2, the candidate, is recorded (not
    released) with the `bad` route. The scripted server: good answers, bad fails every run (a
    model that keeps calling a tool that does not exist)."""
    server.default("good", Reply.say("All fine."))
    server.default("bad", Reply.call("delete_everything", {}))
    good, bad = _route(server, "good"), _route(server, "bad")
    agent = Agent.objects.create(
        name="Help desk", slug=f"h-{uuid.uuid4().hex[:6]}", route=good, confidence_threshold=0
    )
    grant_agent(member, agent)
    grant(member, bad)
    version_record(agent=agent, actor=owner, reason="first")
    agent.route = bad
    agent.save(update_fields=["route"])
    version_record(agent=agent, actor=owner, reason="try the new route", release=False)
    return agent


def versions(agent) -> tuple[AgentVersion, AgentVersion]:
    """(v1, v2)."""
    v1, v2 = AgentVersion.objects.filter(agent=agent).order_by("number")[:2]
    return v1, v2


def start(agent, owner, **fields) -> Release:
    _, candidate = versions(agent)
    fields.setdefault("share", 50)
    return release_start(agent=agent, candidate=candidate, actor=owner, **fields)


def ask(agent, member, conversation=None, *, execute=True) -> Run:
    conversation = conversation or Conversation(owner=member, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=member, input="hi", stream=False)
    if execute:
        run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


# --- who gets the candidate -------------------------------------------------------------------


def test_the_candidate_serves_its_share_of_conversations_each_always_the_same_version(
    agent, member, owner
):
    v1, v2 = versions(agent)
    release = start(agent, owner, share=30)
    conversations = [Conversation.objects.create(owner=member, agent=agent) for _ in range(200)]

    first = {c.pk: ask(agent, member, c, execute=False).version_id for c in conversations}
    # What the next run of each would get (run_start asks the same).
    again = {c.pk: version_serving(agent=agent, conversation=c).pk for c in conversations}

    expected = {
        c.pk: v2.pk if release_bucket(release.pk, c.pk) < 30 else v1.pk for c in conversations
    }
    assert first == expected
    assert again == first  # sticky: each conversation's runs all get its version
    given = sum(1 for version in first.values() if version == v2.pk)
    assert 40 <= given <= 80  # about 30% of 200 (the hash spreads them)
    assert set(first.values()) == {v1.pk, v2.pk}
    recorded = Run.objects.filter(conversation__in=conversations, version=v2).count()
    assert recorded == given  # the runs record the version that served them


def test_a_new_conversation_keeps_the_version_its_first_message_drew(agent, member, owner):
    v1, v2 = versions(agent)
    start(agent, owner, share=50)

    served = []
    for _ in range(40):
        first = ask(agent, member, execute=False)  # an unsaved conversation, saved with the run
        later = [ask(agent, member, first.conversation, execute=False).version_id for _ in range(3)]
        assert later == [first.version_id] * 3
        served.append(first.version_id)

    assert set(served) == {v1.pk, v2.pk}  # both drawn (a 2**-39 chance of not)


def test_a_conversation_begun_before_the_release_keeps_its_version(agent, member, owner):
    """Sticky per conversation: no thread changes version in its middle; those the release
    finds empty are placed by their hash."""
    v1, v2 = versions(agent)
    begun = [Conversation.objects.create(owner=member, agent=agent) for _ in range(20)]
    for conversation in begun:
        ask(agent, member, conversation, execute=False)  # v1 served them before
    empty = [Conversation.objects.create(owner=member, agent=agent) for _ in range(20)]
    release = start(agent, owner, share=50)

    served = {c.pk: ask(agent, member, c, execute=False).version_id for c in begun + empty}

    assert served == {c.pk: v1.pk for c in begun} | {
        c.pk: v2.pk if release_bucket(release.pk, c.pk) < 50 else v1.pk for c in empty
    }
    assert {served[c.pk] for c in empty} == {v1.pk, v2.pk}  # a 2**-19 chance of not


def test_without_a_running_release_everyone_gets_the_live_version(agent, member, owner):
    v1, _ = versions(agent)
    release = start(agent, owner, share=99)
    release_stop(release=release, actor=owner)

    runs = [ask(agent, member, execute=False) for _ in range(10)]

    assert {run.version_id for run in runs} == {v1.pk}


def test_release_candidate_asks_one_query_and_version_serving_none_more_without_a_release(
    agent, member, owner, django_assert_num_queries
):
    conversations = [Conversation.objects.create(owner=member, agent=agent) for _ in range(20)]
    with django_assert_num_queries(2):  # versions' own two: no release runs
        version_serving(agent=agent, conversation=conversations[0])
    release = start(agent, owner, share=50)
    given = next(c for c in conversations if release_bucket(release.pk, c.pk) < 50)
    not_given = next(c for c in conversations if release_bucket(release.pk, c.pk) >= 50)

    for conversation in (given, not_given, None):
        with django_assert_num_queries(1):
            release_candidate(agent=agent, conversation=conversation)
    v1, v2 = versions(agent)
    with django_assert_num_queries(2):  # the candidate: versions' first, and the release
        assert version_serving(agent=agent, conversation=given) == v2
    with django_assert_num_queries(3):  # not given it: and the live version
        assert version_serving(agent=agent, conversation=not_given) == v1


# --- starting ---------------------------------------------------------------------------------


def test_starting_a_release_is_audited(agent, owner):
    v1, v2 = versions(agent)

    release = start(agent, owner, share=20, max_error_rate=Decimal("10"), min_runs=5)

    assert (release.candidate, release.baseline, release.state) == (v2, v1, ReleaseState.RUNNING)
    event = AuditEvent.objects.get(action="release.started")
    assert event.actor_id == str(owner.pk)
    assert json.loads(event.data) == {
        "release": release.pk,
        "kind": "canary",
        "candidate": 2,
        "baseline": 1,
        "share": 20,
        "guards": {"max_error_rate": "10"},
        "min_runs": 5,
        "min_duration_seconds": 3600,
    }


def test_one_running_release_per_agent(agent, owner):
    first = start(agent, owner)

    with pytest.raises(ReleaseError, match="already running"):
        start(agent, owner)
    # The database holds to it too, whatever writes.
    with pytest.raises(IntegrityError), transaction.atomic():
        Release.objects.create(
            agent=agent, candidate=first.candidate, baseline=first.baseline, share=5
        )
    assert Release.objects.filter(agent=agent).count() == 1
    assert AuditEvent.objects.filter(action="release.started").count() == 1
    release_stop(release=first, actor=owner)
    assert start(agent, owner).state == ReleaseState.RUNNING  # once it ended, another may


@pytest.mark.parametrize(
    ("candidate", "share", "message"),
    [
        ("live", 10, "v1 is already live"),
        ("other", 10, "is not a version of Help desk"),
        ("v2", 0, "from 1 to 99"),
        ("v2", 100, "from 1 to 99"),
    ],
)
def test_a_release_that_cannot_start_writes_nothing(
    agent, owner, server, candidate, share, message
):
    v1, v2 = versions(agent)
    other = Agent.objects.create(name="Other", slug=f"o-{uuid.uuid4().hex[:6]}", route=agent.route)
    version_record(agent=other, actor=owner)
    chosen = {"live": v1, "v2": v2, "other": other.versions.get()}[candidate]

    with pytest.raises(ReleaseError, match=message):
        release_start(agent=agent, candidate=chosen, actor=owner, share=share)

    assert not Release.objects.exists()
    assert not AuditEvent.objects.filter(action="release.started").exists()


# --- metrics ----------------------------------------------------------------------------------


def test_live_metrics_per_version_since_the_release_started(agent, member, owner):
    v1, v2 = versions(agent)
    ask(agent, member)  # before the release: not counted
    release = start(agent, owner, share=50)
    runs = [ask(agent, member) for _ in range(12)]
    answered = [r for r in runs if r.state == RunState.SUCCEEDED]
    feedback_record(actor=member, run_id=answered[0].pk, rating="down")
    feedback_record(actor=member, run_id=answered[1].pk, rating="up")

    metrics = release_metrics(release)

    by_version = {v1.pk: [r for r in runs if r.version_id == v1.pk], v2.pk: []}
    by_version[v2.pk] = [r for r in runs if r.version_id == v2.pk]
    candidate, baseline = metrics.candidate, metrics.baseline
    assert candidate.runs == candidate.finished == candidate.failed == len(by_version[v2.pk])
    assert baseline.runs == baseline.finished == len(by_version[v1.pk])
    assert baseline.failed == 0
    assert candidate.runs + baseline.runs == 12
    assert (baseline.thumbs_up, baseline.thumbs_down, baseline.rated_down) == (1, 1, 1)
    assert (candidate.thumbs_up, candidate.thumbs_down) == (0, 0)
    assert candidate.error_rate == Decimal("100.00")
    assert baseline.error_rate == Decimal("0.00")
    assert baseline.thumbs_down_rate == (Decimal(100) / baseline.finished).quantize(Decimal("0.01"))
    assert baseline.cost_per_run == Decimal("0.000000")  # the scripted model has no price
    assert baseline.p95_latency_ms is not None
    assert candidate.escalated == candidate.held == baseline.escalated == 0


def test_an_evaluations_runs_of_the_candidate_are_not_its_live_metrics(agent, member, owner):
    v2 = versions(agent)[1]
    release = start(agent, owner, share=50)
    conversation = Conversation.objects.create(owner=member, agent=agent)
    run = run_start(
        agent=agent,
        conversation=conversation,
        actor=member,
        input="hi",
        stream=False,
        version=v2,
        sandbox=True,
    )
    run_execute(run_id=run.pk, holder="test")

    assert Run.objects.get(pk=run.pk).state == RunState.FAILED
    assert release_metrics(release).candidate.runs == 0


def test_metrics_take_two_queries(agent, member, owner, django_assert_num_queries):
    release = start(agent, owner, share=50)
    for _ in range(4):
        ask(agent, member)

    with django_assert_num_queries(2):
        release_metrics(release)


# --- the judge --------------------------------------------------------------------------------


def test_the_judge_rolls_back_a_candidate_over_its_error_rate_with_an_audit_event_and_a_notice(
    agent, member, owner, django_capture_on_commit_callbacks
):
    from config.celery import app

    v1, v2 = versions(agent)
    release = start(agent, owner, share=50, max_error_rate=Decimal("20"), min_runs=3)
    conversation_ids = []
    while Run.objects.filter(version=v2, state=RunState.FAILED).count() < 3:
        conversation_ids.append(ask(agent, member).conversation_id)

    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            outcomes = releases_judge()
    finally:
        app.conf.task_always_eager = eager

    assert outcomes == {release.pk: ReleaseState.ROLLED_BACK}
    release.refresh_from_db()
    assert release.state == ReleaseState.ROLLED_BACK
    assert release.ended_by is None
    assert release.ended_reason == "error rate 100.00% is over its limit of 20.00%"
    event = AuditEvent.objects.get(action="release.rolled_back")
    assert event.actor_type == "system"
    assert json.loads(event.data) == {
        "release": release.pk,
        "kind": "canary",
        "candidate": 2,
        "baseline": 1,
        "share": 50,
        "reason": "error rate 100.00% is over its limit of 20.00%",
        "metric": "max_error_rate",
        "value": "100.00",
        "limit": "20.00",
    }
    # The agent is back on the baseline's config: a new live version restoring v1.
    agent.refresh_from_db()
    live = agent.live_version
    assert (live.number, live.rollback_of, live.config) == (3, v1, v1.config)
    assert agent.route_id == v1.config["route"]
    assert ask(agent, member).state == RunState.SUCCEEDED
    # The owners were told (the governance admin here), by email.
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["olga@example.com"]
    assert mail.outbox[0].subject == "[Warden] Help desk: v2 was rolled back"
    assert "error rate 100.00% is over its limit of 20.00%" in mail.outbox[0].body
    # And counted for Prometheus.
    from prometheus_client import REGISTRY

    assert (
        REGISTRY.get_sample_value(
            "warden_releases_ended_total",
            {"agent": agent.slug, "state": "rolled_back", "cause": "max_error_rate"},
        )
        == 1
    )


def test_the_judge_waits_for_min_runs_before_a_guard_judges(agent, member, owner):
    v2 = versions(agent)[1]
    release = start(agent, owner, share=50, max_error_rate=Decimal("20"), min_runs=3)
    while Run.objects.filter(version=v2, state=RunState.FAILED).count() < 2:
        ask(agent, member)

    assert releases_judge() == {release.pk: "kept"}

    release.refresh_from_db()
    assert release.state == ReleaseState.RUNNING
    assert not AuditEvent.objects.filter(action="release.rolled_back").exists()


def test_thumbs_down_crosses_its_guard(server, agent, member, owner):
    v2 = versions(agent)[1]
    server.default("bad", Reply.say("Meh."))  # the candidate answers now, badly
    release = start(agent, owner, share=50, max_thumbs_down_rate=Decimal("50"), min_runs=2)
    answered = []
    while len([r for r in answered if r.version_id == v2.pk]) < 2:
        answered.append(ask(agent, member))
    for run in answered:
        if run.version_id == v2.pk:
            feedback_record(actor=member, run_id=run.pk, rating="down")

    assert releases_judge() == {release.pk: ReleaseState.ROLLED_BACK}

    event = AuditEvent.objects.get(action="release.rolled_back")
    assert (
        json.loads(event.data)["metric"],
        json.loads(event.data)["value"],
        json.loads(event.data)["limit"],
    ) == (
        "max_thumbs_down_rate",
        "100.00",
        "50.00",
    )


def test_held_answers_are_escalations_and_cross_their_guard(agent, member, owner):
    # v3: the offline model, which reports its confidence, every answer held for a reviewer.
    local = ModelRoute.objects.create(name=f"local-{uuid.uuid4().hex[:6]}")
    Deployment.objects.create(route=local, position=1, model="warden-local/demo")
    grant(member, local)
    agent.route = local
    agent.confidence_threshold = Decimal("1.00")
    agent.save(update_fields=["route", "confidence_threshold"])
    v3 = version_record(agent=agent, actor=owner, reason="stricter", release=False)
    release = release_start(
        agent=agent, candidate=v3, actor=owner, share=50, max_held_rate=Decimal("25"), min_runs=2
    )
    while Run.objects.filter(version=v3).count() < 2:
        ask(agent, member)

    metrics = release_metrics(release)

    held = Run.objects.filter(version=v3)
    assert set(held.values_list("state", flat=True)) == {RunState.AWAITING_REVIEW}
    assert (metrics.candidate.settled, metrics.candidate.finished) == (2, 0)
    assert (metrics.candidate.held, metrics.candidate.escalated) == (2, 2)
    assert metrics.candidate.held_rate == Decimal("100.00")
    assert metrics.baseline.held == metrics.baseline.escalated == 0
    assert releases_judge() == {release.pk: ReleaseState.ROLLED_BACK}
    event = AuditEvent.objects.get(action="release.rolled_back")
    assert json.loads(event.data)["metric"] == "max_held_rate"


def test_an_unguarded_metric_is_not_judged(agent, member, owner):
    v2 = versions(agent)[1]
    release = start(agent, owner, share=50, min_runs=1)
    while not Run.objects.filter(version=v2).exists():
        ask(agent, member)

    assert releases_judge() == {release.pk: "kept"}


def test_the_judge_promotes_a_canary_only_once_an_evaluation_passed(server, agent, member, owner):
    v2 = versions(agent)[1]
    server.default("bad", Reply.say("Better."))
    release = start(
        agent, owner, share=50, max_error_rate=Decimal("20"), min_runs=1, min_duration=timedelta(0)
    )
    while not Run.objects.filter(version=v2).exists():
        ask(agent, member)

    from agents.releases import promotion_unmet

    # Not evaluated, then evaluated and failed: not promoted either time.
    assert releases_judge() == {release.pk: "kept"}
    evaluated(agent, v2, owner, passed=False)
    assert releases_judge() == {release.pk: "kept"}
    assert promotion_unmet(release, release_metrics(release)) == [NO_EVALUATION]
    # The baseline's passing evaluation is not the candidate's.
    evaluated(agent, versions(agent)[0], owner, passed=True)
    assert releases_judge() == {release.pk: "kept"}
    release.refresh_from_db()
    assert release.state == ReleaseState.RUNNING
    agent.refresh_from_db()
    assert agent.live_version == versions(agent)[0]


def evaluated(agent, version, owner, *, passed: bool) -> EvaluationRun:
    """A finished evaluation of `version` on the agent's set (made once), that passed or not
    (agents.evaluation runs them: its own tests say how)."""
    evaluation_set = EvaluationSet.objects.filter(agent=agent).first()
    if evaluation_set is None:
        evaluation_set = evaluation_set_create(agent=agent, name="smoke", actor=owner)
    return EvaluationRun.objects.create(
        set=evaluation_set,
        version=version,
        started_by=owner,
        state=EvaluationState.SUCCEEDED,
        finished_at=timezone.now(),
        passed=passed,
        scores={"overall": 0.9 if passed else 0.2},
    )


def test_the_judge_promotes_a_ready_canary_whose_evaluation_passed(
    server, agent, member, owner, django_capture_on_commit_callbacks
):
    from config.celery import app

    v2 = versions(agent)[1]
    server.default("bad", Reply.say("Better."))
    release = start(
        agent, owner, share=50, max_error_rate=Decimal("20"), min_runs=2, min_duration=timedelta(0)
    )
    while Run.objects.filter(version=v2).count() < 2:
        ask(agent, member)
    evaluated(agent, v2, owner, passed=True)

    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            outcomes = releases_judge()
    finally:
        app.conf.task_always_eager = eager

    assert outcomes == {release.pk: ReleaseState.PROMOTED}
    agent.refresh_from_db()
    assert agent.live_version == v2
    event = AuditEvent.objects.get(action="release.promoted")
    assert event.actor_type == "system"
    data = json.loads(event.data)
    assert data["unmet"] == []
    assert data["reason"].endswith("2 runs, within its guards, evaluation passed")
    assert [m.subject for m in mail.outbox] == ["[Warden] Help desk: v2 was promoted"]
    assert {ask(agent, member, execute=False).version_id for _ in range(5)} == {v2.pk}


def test_an_ab_release_is_never_promoted_by_the_judge(agent, member, owner):
    release = start(agent, owner, share=50, kind=ReleaseKind.AB, min_duration=timedelta(0))
    from agents.releases import promotion_unmet

    assert promotion_unmet(release, release_metrics(release)) == [
        "an A/B release is promoted by a person",
        "0 of 20 runs settled",
        NO_EVALUATION,
    ]


def test_neither_version_s_route_can_be_deleted_while_the_release_runs(agent, member, owner):
    """Both serve: the baseline (live) and the candidate (agents.models.version_route_deleted),
    so the judge can always restore the baseline."""
    v1, v2 = versions(agent)
    release = start(agent, owner, share=50, max_error_rate=Decimal("20"), min_runs=1)
    while not Run.objects.filter(version=v2).exists():
        ask(agent, member)

    for version in (v1, v2):
        with pytest.raises(ProtectedError):
            ModelRoute.objects.get(pk=version.config["route"]).delete()

    assert releases_judge() == {release.pk: ReleaseState.ROLLED_BACK}
    release.refresh_from_db()
    assert release.ended_reason == "error rate 100.00% is over its limit of 20.00%"
    assert release_candidate(agent=agent, conversation=None) is None


# --- ending by hand ---------------------------------------------------------------------------


def test_a_person_promotes_the_candidate_live(agent, member, owner):
    v2 = versions(agent)[1]
    release = start(agent, owner, share=10)

    release_promote(release=release, actor=owner)

    agent.refresh_from_db()
    assert agent.live_version == v2
    release.refresh_from_db()
    assert (release.state, release.ended_by) == (ReleaseState.PROMOTED, owner)
    event = AuditEvent.objects.get(action="release.promoted")
    assert json.loads(event.data)["unmet"] == [
        "0 of 20 runs settled",
        "it has run 0 min of 1 h 00 min",
        NO_EVALUATION,
    ]
    assert {ask(agent, member, execute=False).version_id for _ in range(5)} == {v2.pk}
    assert not mail.outbox  # a person's own decision: nobody else is emailed


def test_a_person_rolls_back_and_an_ended_release_cannot_end_again(agent, member, owner):
    v1, _ = versions(agent)
    release = start(agent, owner, share=90)

    release_rollback(release=release, actor=owner, reason="looks wrong")

    agent.refresh_from_db()
    assert agent.live_version.rollback_of == v1
    assert (
        json.loads(AuditEvent.objects.get(action="release.rolled_back").data)["reason"]
        == "looks wrong"
    )
    with pytest.raises(ReleaseError, match="has ended already"):
        release_stop(release=release, actor=owner)
    assert not AuditEvent.objects.filter(action="release.stopped").exists()
    assert {ask(agent, member, execute=False).version_id for _ in range(5)} == {
        agent.live_version_id
    }


def test_beat_judges_the_releases_every_minute(settings, agent, member, owner):
    from agents.tasks import releases_judge_task

    assert settings.CELERY_BEAT_SCHEDULE["releases-judge"] == {
        "task": "agents.tasks.releases_judge_task",
        "schedule": 60,
    }
    v2 = versions(agent)[1]
    release = start(agent, owner, share=50, max_error_rate=Decimal("20"), min_runs=1)
    while not Run.objects.filter(version=v2).exists():
        ask(agent, member)

    releases_judge_task()

    assert Release.objects.get(pk=release.pk).state == ReleaseState.ROLLED_BACK
