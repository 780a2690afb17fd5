"""Drift watch (agents.drift): runs written to the database day by day, as the orchestrator
leaves them (confidence, retrieval and tool steps, rejected, held and "I don't know" runs), for
a stable agent, a drifting one and a quiet one; what the daily check finds, records, audits,
counts and prints."""

from __future__ import annotations

import io
import json
import uuid
from datetime import date, datetime, time
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agents.drift import (
    Window,
    drift_acknowledge,
    drift_check,
    drift_measure,
    drift_reference_pin,
    drift_reference_unpin,
    js_distance,
    psi,
)
from agents.gateway.local import NO_ANSWER
from agents.models import Agent, DriftCheck, DriftReference, ModelRoute, Run, RunState, RunStep
from agents.tasks import drift_check_task
from audit.models import AuditEvent
from governance.models import Escalation

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 30)  # the day checked; the reference is Nov 16 to 29
REFERENCE = Window(date(2026, 11, 16), date(2026, 11, 29))
STEADY_CONFIDENCE = [0.55, 0.65, 0.75, 0.85, 0.95]
SIMILARITY = [0.52, 0.64, 0.71, 0.83]


def _agent(name: str) -> Agent:
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    return Agent.objects.create(
        name=name, slug=f"{name.lower()}-{uuid.uuid4().hex[:4]}", route=route
    )


def _day(
    agent: Agent,
    actor,
    day: date,
    *,
    runs: int = 40,
    confidence=STEADY_CONFIDENCE,
    rejected: int = 4,
    unknown: int = 0,
    held: int = 0,
    tools=(("lookup_order", 24), ("create_ticket", 16)),
) -> None:
    """`runs` runs of `agent` created at noon on `day`: the first `rejected` rejected, the next
    `unknown` answered "I don't know", the next `held` waiting for a reviewer (their confidence
    on the escalation), the rest answered; confidences cycle through `confidence`; each run
    retrieved (similarities cycling) and called one tool, the tools in the counts given."""
    names = [name for name, n in tools for _ in range(n)]
    assert len(names) == runs
    made = []
    for i in range(runs):
        state, answer = RunState.SUCCEEDED, "An answer [1]."
        if i < rejected:
            state, answer = RunState.REJECTED, ""
        elif i < rejected + unknown:
            answer = NO_ANSWER
        elif i < rejected + unknown + held:
            state, answer = RunState.AWAITING_REVIEW, ""
        value = Decimal(str(confidence[i % len(confidence)]))
        made.append(
            Run(
                agent=agent,
                actor=actor,
                input="q",
                state=state,
                answer=answer,
                # A held answer's confidence is its escalation's until a reviewer decides.
                confidence=value if state == RunState.SUCCEEDED else None,
            )
        )
    Run.objects.bulk_create(made)
    noon = timezone.make_aware(datetime.combine(day, time(12)))
    Run.objects.filter(pk__in=[r.pk for r in made]).update(created_at=noon)
    Escalation.objects.bulk_create(
        Escalation(
            run=run,
            agent_id=agent.pk,
            requested_by=actor,
            question="q",
            answer="maybe",
            confidence=run_confidence,
            threshold=Decimal("0.80"),
        )
        for run, run_confidence in (
            (r, Decimal(str(confidence[i % len(confidence)])))
            for i, r in enumerate(made)
            if r.state == RunState.AWAITING_REVIEW
        )
    )
    steps = []
    for i, run in enumerate(made):
        passages: list[dict] = [
            {"n": 1, "score": 0.03, "similarity": SIMILARITY[i % len(SIMILARITY)]}
        ]
        passages.append({"n": 2, "score": 0.02, "similarity": None})
        steps.append(_step(run, 0, "retrieval", output={"passages": passages}))
        call = {"id": "c", "name": names[i], "arguments": "{}"}
        steps.append(_step(run, 1, "tool", input={"call": call, "key": "k"}))
    RunStep.objects.bulk_create(steps)


def _step(run: Run, index: int, kind: str, **fields) -> RunStep:
    now = timezone.now()
    return RunStep(run=run, index=index, kind=kind, started_at=now, finished_at=now, **fields)


@pytest.fixture
def agents(people):
    """Three agents, alike for the 14 reference days; on DAY the stable one is the same, the
    drifting one's confidence falls, a new tool takes over its calls and it refuses three
    times as often, and the quiet one drifts alike but on 20 runs only."""
    stable, drifting, quiet = _agent("Stable"), _agent("Drifting"), _agent("Quiet")
    for day in REFERENCE.days():
        for agent in (stable, drifting, quiet):
            _day(agent, people.member, day)
    _day(stable, people.member, DAY)
    shifted = [0.15, 0.25, 0.35, 0.45, 0.85]
    refunds = (("issue_refund", 28), ("lookup_order", 8), ("create_ticket", 4))
    _day(
        drifting,
        people.member,
        DAY,
        confidence=shifted,
        rejected=6,
        unknown=3,
        held=3,
        tools=refunds,
    )
    _day(
        quiet,
        people.member,
        DAY,
        runs=20,
        confidence=shifted,
        rejected=3,
        unknown=2,
        held=1,
        tools=(("issue_refund", 20),),
    )
    return stable, drifting, quiet


def test_the_statistics_are_those_of_the_textbook():
    same = {1: 10, 2: 30}
    assert psi(_c(same), _c(same)) == 0
    assert js_distance(_c({"a": 5}), _c({"b": 5})) == 1
    assert js_distance(_c({"a": 5, "b": 5}), _c({"a": 50, "b": 50})) == 0
    # PSI with a half added to each bin's count: (0.25-0.75) ln(1/3) + (0.75-0.25) ln 3.
    assert psi(_c({1: 9.5, 2: 29.5}), _c({1: 29.5, 2: 9.5})) == pytest.approx(
        2 * 0.5 * 1.0986, 1e-3
    )


def _c(counts: dict):
    from collections import Counter

    return Counter(counts)


def test_a_stable_agent_does_not_alert_and_a_drifting_one_does_on_each_moved_signal(
    agents, django_assert_num_queries
):
    with django_assert_num_queries(5):  # the agents, then one aggregate per signal
        measures = drift_measure(day=DAY)

    found = {
        (m.agent.name, m.signal): (m.value, m.alert, m.samples, m.reference_samples)
        for m in measures
    }
    assert found == {
        ("Stable", "confidence"): (0.0, False, 36, 504),
        ("Stable", "retrieval"): (0.0, False, 40, 560),
        ("Stable", "refusals"): (0.0, False, 40, 560),
        ("Stable", "tool_mix"): (0.0, False, 40, 560),
        ("Drifting", "confidence"): (5.9946, True, 34, 504),
        ("Drifting", "retrieval"): (0.0, False, 40, 560),
        ("Drifting", "refusals"): (0.2, True, 40, 560),
        ("Drifting", "tool_mix"): (0.7036, True, 40, 560),
        ("Quiet", "confidence"): (None, False, 17, 504),
        ("Quiet", "retrieval"): (None, False, 20, 560),
        ("Quiet", "refusals"): (None, False, 20, 560),
        ("Quiet", "tool_mix"): (None, False, 20, 560),
    }


def _alerts() -> set[tuple[str, str]]:
    return set(
        DriftCheck.objects.filter(alert=True).values_list("agent__name", "signal").order_by()
    )


def test_the_check_records_the_checks_audits_and_counts_each_alert_once(
    agents, django_capture_on_commit_callbacks
):
    stable, drifting, quiet = agents
    counted = {"agent": drifting.slug, "signal": "refusals"}
    before = REGISTRY.get_sample_value("warden_drift_alerts_total", counted) or 0

    with django_capture_on_commit_callbacks(execute=True):
        drift_check(day=DAY)

    assert _alerts() == {
        ("Drifting", "confidence"),
        ("Drifting", "refusals"),
        ("Drifting", "tool_mix"),
    }
    # The quiet agent's day had too few runs: nothing recorded, nothing alerted.
    assert not DriftCheck.objects.filter(agent=quiet).exists()
    assert DriftCheck.objects.filter(agent=stable, alert=False).count() == 4
    refusals = DriftCheck.objects.get(agent=drifting, signal="refusals")
    assert (refusals.statistic, refusals.value, refusals.threshold) == ("rate_difference", 0.2, 0.1)
    assert (refusals.reference_since, refusals.reference_until) == (
        REFERENCE.since,
        REFERENCE.until,
    )
    assert refusals.distributions == {
        "day": {"answered": 28, "refused": 12},
        "reference": {"answered": 504, "refused": 56},
    }
    events = AuditEvent.objects.filter(action="agent.drift_detected").order_by("sequence")
    facts = [json.loads(e.data) for e in events]
    assert [(e.target_id, f["signal"], f["value"]) for e, f in zip(events, facts, strict=True)] == [
        (str(drifting.pk), "confidence", 5.9946),
        (str(drifting.pk), "refusals", 0.2),
        (str(drifting.pk), "tool_mix", 0.7036),
    ]
    assert facts[1]["day_summary"] == "30.0% of 40"
    assert facts[1]["reference_summary"] == "10.0% of 560"
    assert REGISTRY.get_sample_value("warden_drift_alerts_total", counted) == before + 1

    # Checking the day again (beat ran twice, an operator ran the command) adds nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert drift_check_task(DAY.isoformat()) == 3
    assert DriftCheck.objects.count() == 8
    assert AuditEvent.objects.filter(action="agent.drift_detected").count() == 3
    assert REGISTRY.get_sample_value("warden_drift_alerts_total", counted) == before + 1


def test_the_minimum_samples_are_settings(agents, settings):
    settings.WARDEN_DRIFT_MIN_SAMPLES = 41

    assert [m for m in drift_measure(day=DAY) if m.value is not None] == []

    settings.WARDEN_DRIFT_MIN_SAMPLES = 10
    settings.WARDEN_DRIFT_MIN_REFERENCE_SAMPLES = 600
    assert [m for m in drift_measure(day=DAY) if m.value is not None] == []

    settings.WARDEN_DRIFT_MIN_REFERENCE_SAMPLES = 100
    quiet = {m.signal: m.alert for m in drift_measure(day=DAY) if m.agent.name == "Quiet"}
    assert quiet == {"confidence": True, "retrieval": False, "refusals": True, "tool_mix": True}


def test_a_reference_window_can_be_pinned(agents):
    # Against the drifted day itself, the drifting agent has not moved.
    measures = drift_measure(day=DAY, reference=Window(DAY, DAY))

    assert {(m.agent.name, m.signal) for m in measures if m.alert} == set()


def _scrape(client) -> dict[tuple[str, str, str], float]:
    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").content.decode()
    return {
        (sample.name, sample.labels["agent"], sample.labels["signal"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("warden_agent_drift")
        for sample in family.samples
    }


def test_the_metrics_give_each_agents_latest_statistic_and_its_open_alerts(
    agents, people, client, settings
):
    settings.WARDEN_METRICS_TOKEN = "scrape-me"
    stable, drifting, quiet = agents
    drift_check(day=DAY)

    scraped = _scrape(client)

    assert scraped[("warden_agent_drift", drifting.slug, "tool_mix")] == 0.7036
    assert scraped[("warden_agent_drift_alerting", drifting.slug, "tool_mix")] == 1
    assert scraped[("warden_agent_drift", stable.slug, "tool_mix")] == 0
    assert scraped[("warden_agent_drift_alerting", stable.slug, "tool_mix")] == 0
    assert not any(key[1] == quiet.slug for key in scraped)

    drift_acknowledge(
        check=DriftCheck.objects.get(agent=drifting, signal="tool_mix"), actor=people.admin
    )

    assert _scrape(client)[("warden_agent_drift_alerting", drifting.slug, "tool_mix")] == 0


def _command(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("drift", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


def test_the_command_prints_each_signal_and_exits_1_on_an_alert(agents):
    _, drifting, quiet = agents

    code, out = _command("--day", "2026-11-30", "--agent", drifting.slug, "--agent", quiet.slug)

    assert code == 1
    d, q = f"{drifting.slug:<24}", f"{quiet.slug:<24}"
    assert out.splitlines() == [
        "Drift on 2026-11-30 against 2026-11-16..2026-11-29",
        f"{d} confidence psi +5.9946 (threshold 0.25) ALERT: mean ~0.42 of 34 vs mean ~0.76 of 504",
        f"{d} retrieval  psi +0.0000 (threshold 0.25) ok: mean ~0.70 of 40 vs mean ~0.70 of 560",
        f"{d} refusals   rate_difference +0.2000 (threshold 0.1) ALERT: 30.0% of 40 vs "
        "10.0% of 560",
        f"{d} tool_mix   js_distance +0.7036 (threshold 0.3) ALERT: issue_refund 70%, "
        "lookup_order 20%, create_ticket 10% vs lookup_order 60%, create_ticket 40%",
        f"{q} confidence skipped: too few samples (17 on the day, 504 in the reference; need 30 "
        "and 100)",
        f"{q} retrieval  skipped: too few samples (20 on the day, 560 in the reference; need 30 "
        "and 100)",
        f"{q} refusals   skipped: too few samples (20 on the day, 560 in the reference; need 30 "
        "and 100)",
        f"{q} tool_mix   skipped: too few samples (20 on the day, 560 in the reference; need 30 "
        "and 100)",
        "3 alerts",
    ]
    assert DriftCheck.objects.filter(agent=drifting).count() == 4


def test_the_command_exits_0_when_nothing_drifted_and_dry_run_records_nothing(agents):
    stable = agents[0]

    code, out = _command("--day", "2026-11-30", "--agent", stable.slug, "--dry-run")

    assert code == 0
    assert out.splitlines()[-1] == "0 alerts"
    assert not DriftCheck.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--day", "yesterday"], "not a date (YYYY-MM-DD): 'yesterday'"),
        (["--reference", "2026-11-20:2026-11-10"], "the window starts (2026-11-20) after it ends"),
        (["--agent", "nobody"], "no agent nobody"),
    ],
)
def test_the_command_exits_2_on_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        call_command("drift", *args)
    assert e.value.returncode == 2
    assert not DriftCheck.objects.exists()


def test_a_pinned_reference_window_is_what_later_days_are_compared_with(agents, people):
    stable, drifting, _ = agents
    # Days known to be right for the drifting agent: before the runs here began, so empty.
    drift_reference_pin(
        agent=drifting,
        since=date(2026, 11, 1),
        until=date(2026, 11, 5),
        actor=people.admin,
        reason="approved after the v2 release",
    )

    code, out = _command("--day", "2026-11-30", "--agent", drifting.slug, "--agent", stable.slug)

    assert code == 0
    lines = out.splitlines()
    assert lines[1] == (
        f"{drifting.slug:<24} confidence skipped: too few samples (34 on the day, 0 in the "
        "reference; need 30 and 100) [pinned reference 2026-11-01..2026-11-05]"
    )
    assert lines[5].startswith(f"{stable.slug:<24} confidence psi +0.0000")
    assert "pinned" not in lines[5]
    event = AuditEvent.objects.get(action="agent.drift_reference_pinned")
    assert (event.actor_id, event.target_id) == (str(people.admin.pk), str(drifting.pk))
    assert json.loads(event.data) == {
        "reference": "2026-11-01..2026-11-05",
        "reason": "approved after the v2 release",
    }

    assert drift_reference_unpin(agent=drifting, actor=people.admin) is True
    assert {(m.signal, m.alert) for m in drift_measure(day=DAY, agents=[drifting])} == {
        ("confidence", True),
        ("retrieval", False),
        ("refusals", True),
        ("tool_mix", True),
    }


def test_a_reference_window_that_has_not_ended_is_refused(agents, people):
    _, drifting, _ = agents
    today = timezone.localdate()

    with pytest.raises(ValueError, match="a reference window must have ended"):
        drift_reference_pin(
            agent=drifting, since=date(2026, 11, 1), until=today, actor=people.admin
        )
    with pytest.raises(ValueError, match="the window starts"):
        drift_reference_pin(
            agent=drifting, since=date(2026, 11, 5), until=date(2026, 11, 1), actor=people.admin
        )

    assert not DriftReference.objects.exists()
    assert not AuditEvent.objects.filter(action="agent.drift_reference_pinned").exists()


def test_the_daily_job_is_scheduled():
    from django.conf import settings

    job = settings.CELERY_BEAT_SCHEDULE["drift-check"]
    assert job["task"] == "agents.tasks.drift_check_task"
    assert (job["schedule"].hour, job["schedule"].minute) == ({1}, {5})
