"""Drift watch: has an agent's behaviour moved? Per agent and day, four signals against a
reference window (the WARDEN_DRIFT_REFERENCE_DAYS before the day, or a window given):

- confidence: the answers' confidence (a held answer's, while it waits, from its escalation),
  in ten fixed bins over 0..1, compared by the population stability index (PSI);
- retrieval: each retrieval step's best cosine similarity among the passages it found (0 when
  it found none), the same ten bins, PSI;
- refusals: the share of runs that did not answer: rejected (a policy or a reviewer said no),
  held for review (an escalation), or answered with the offline model's "I don't know"; the
  statistic is the day's share minus the reference's (either direction alerts);
- tool_mix: tool calls by tool name (the agents it asks included), Jensen-Shannon distance
  (base 2, 0..1).

Counted are the agent's runs (asked by people, integrations, MCP clients or other agents) that
ended or wait for a reviewer, by the day they were created in TIME_ZONE. Every count comes from
one aggregate query per signal over the whole span (four queries, however many runs or days),
and the statistics are computed from those counts here. A signal is compared only with
WARDEN_DRIFT_MIN_SAMPLES on the day and WARDEN_DRIFT_MIN_REFERENCE_SAMPLES in the reference:
a quiet day never alerts. Policy denials at a run's start write no run (only an audit event)
and are not counted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import (
    CharField,
    Count,
    Exists,
    F,
    FloatField,
    Func,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    Value,
)
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Coalesce, TruncDate
from django.utils import timezone

from agents.gateway.local import NO_ANSWER
from agents.models import (
    FINAL_STATES,
    Agent,
    DriftCheck,
    DriftReference,
    DriftSignal,
    Run,
    RunState,
    RunStep,
    StepKind,
)
from audit.services import Target, audit_record
from governance.models import Escalation
from telemetry import metrics

BINS = 10  # fixed bins of width 0.1 over 0..1, for confidence and retrieval similarity
COUNTED = (*FINAL_STATES, RunState.AWAITING_REVIEW)
SIGNALS = tuple(DriftSignal)
STATISTIC = {
    DriftSignal.CONFIDENCE: "psi",
    DriftSignal.RETRIEVAL: "psi",
    DriftSignal.REFUSALS: "rate_difference",
    DriftSignal.TOOL_MIX: "js_distance",
}
REFUSED, ANSWERED = "refused", "answered"


class WidthBucket(Func):
    """PostgreSQL's width_bucket over 0..1 in BINS bins, clamped to 1..BINS (a 1.0 or a
    negative similarity lands in the end bins)."""

    template = f"LEAST(GREATEST(width_bucket(%(expressions)s, 0, 1, {BINS}), 1), {BINS})"
    output_field = IntegerField()


@dataclass(frozen=True)
class Window:
    """Days from `since` to `until`, both included."""

    since: date
    until: date

    def __post_init__(self) -> None:
        if self.since > self.until:
            raise ValueError(f"the window starts ({self.since}) after it ends ({self.until})")

    def days(self) -> list[date]:
        return [self.since + timedelta(days=i) for i in range((self.until - self.since).days + 1)]

    def __str__(self) -> str:
        return f"{self.since.isoformat()}..{self.until.isoformat()}"  # 4-digit years


REFERENCE_MOST_DAYS = 366  # a year's days at most, whatever the year


def reference_before(day: date, days: int | None = None) -> Window:
    days = days or settings.WARDEN_DRIFT_REFERENCE_DAYS
    return Window(day - timedelta(days=days), day - timedelta(days=1))


def reference_for(agent: Agent, day: date) -> Window:
    """The agent's pinned window (DriftReference) for a day after it, else the days before."""
    pinned = getattr(agent, "drift_reference", None)
    if pinned is not None and pinned.until < day:
        return Window(pinned.since, pinned.until)
    return reference_before(day)


def threshold(signal: str) -> float:
    if signal == DriftSignal.REFUSALS:
        return float(settings.WARDEN_DRIFT_REFUSAL_THRESHOLD)
    if signal == DriftSignal.TOOL_MIX:
        return float(settings.WARDEN_DRIFT_TOOL_MIX_THRESHOLD)
    return float(settings.WARDEN_DRIFT_PSI_THRESHOLD)


@dataclass
class Measure:
    """One agent's signal on one day against its reference; `value` is None when either side
    has too few samples (`reason` says which)."""

    agent: Agent
    signal: str
    day: date
    reference: Window
    today: Counter = field(repr=False)
    before: Counter = field(repr=False)
    value: float | None = None
    reason: str = ""

    @property
    def statistic(self) -> str:
        return STATISTIC[DriftSignal(self.signal)]

    @property
    def threshold(self) -> float:
        return threshold(self.signal)

    @property
    def samples(self) -> int:
        return sum(self.today.values())

    @property
    def reference_samples(self) -> int:
        return sum(self.before.values())

    @property
    def alert(self) -> bool:
        return self.value is not None and abs(self.value) >= self.threshold

    @property
    def day_summary(self) -> str:
        """The day's distribution in a few words: a mean, a rate or the leading tools."""
        return describe(self.signal, self.today)

    @property
    def reference_summary(self) -> str:
        return describe(self.signal, self.before)


# Counts per (agent id, signal) -> day -> category -> count.
Counts = dict[tuple[int, str], dict[date, Counter]]


def _span(window: Window) -> tuple[datetime, datetime]:
    start = timezone.make_aware(datetime.combine(window.since, time.min))
    end = timezone.make_aware(datetime.combine(window.until + timedelta(days=1), time.min))
    return start, end


def drift_counts(*, window: Window, agent_ids: Iterable[int] | None = None) -> Counts:
    """Every signal's counts per agent and day in `window`: four aggregate queries."""
    start, end = _span(window)
    runs = Run.objects.filter(
        agent__isnull=False, created_at__gte=start, created_at__lt=end, state__in=COUNTED
    )
    steps = RunStep.objects.filter(
        run__agent__isnull=False,
        run__created_at__gte=start,
        run__created_at__lt=end,
        run__state__in=COUNTED,
    )
    if agent_ids is not None:
        runs = runs.filter(agent_id__in=list(agent_ids))
        steps = steps.filter(run__agent_id__in=list(agent_ids))
    counts: Counts = {}

    def add(agent_id: int, signal: str, day: date, category: object, n: int) -> None:
        per_day = counts.setdefault((agent_id, signal), {})
        per_day.setdefault(day, Counter())[category] += n

    held = Escalation.objects.filter(run_id=OuterRef("pk"))
    confidence = Coalesce(F("confidence"), Subquery(held.values("confidence")[:1]))
    for row in (
        runs.annotate(c=confidence)
        .filter(c__isnull=False)
        .values("agent_id", day=TruncDate("created_at"), bin=WidthBucket(Cast("c", FloatField())))
        .annotate(n=Count("pk"))
    ):
        add(row["agent_id"], DriftSignal.CONFIDENCE, row["day"], row["bin"], row["n"])

    # The best similarity among the passages found (found by words alone: no similarity).
    best = RawSQL(
        "SELECT COALESCE(max((p ->> 'similarity')::float), 0) FROM "
        "jsonb_array_elements(COALESCE(agents_runstep.output -> 'passages', '[]'::jsonb)) p",
        (),
        output_field=FloatField(),
    )
    for row in (
        steps.filter(kind=StepKind.RETRIEVAL)
        .values(
            agent_id=F("run__agent_id"),
            day=TruncDate("run__created_at"),
            bin=WidthBucket(best),
        )
        .annotate(n=Count("pk"))
    ):
        add(row["agent_id"], DriftSignal.RETRIEVAL, row["day"], row["bin"], row["n"])

    refused = (
        Q(state=RunState.REJECTED)
        | Q(state=RunState.AWAITING_REVIEW)
        | Q(answer__startswith=NO_ANSWER)
        | Q(Exists(Escalation.objects.filter(run_id=OuterRef("pk"))))
    )
    for row in runs.values("agent_id", day=TruncDate("created_at")).annotate(
        n=Count("pk"), refused=Count("pk", filter=refused)
    ):
        add(row["agent_id"], DriftSignal.REFUSALS, row["day"], REFUSED, row["refused"])
        add(row["agent_id"], DriftSignal.REFUSALS, row["day"], ANSWERED, row["n"] - row["refused"])

    name = Coalesce(
        KeyTextTransform("name", KeyTransform("call", "input")),
        Value("(unnamed)"),
        output_field=CharField(),
    )
    for row in (
        steps.filter(kind=StepKind.TOOL)
        .values(agent_id=F("run__agent_id"), day=TruncDate("run__created_at"), tool=name)
        .annotate(n=Count("pk"))
    ):
        add(row["agent_id"], DriftSignal.TOOL_MIX, row["day"], row["tool"], row["n"])
    return counts


def _sum(per_day: Mapping[date, Counter], days: Iterable[date]) -> Counter:
    total: Counter = Counter()
    for day in days:
        total.update(per_day.get(day, Counter()))
    return total


def psi(today: Counter, before: Counter) -> float:
    """Population stability index over the fixed bins either side has: sum of (p - q) ln(p/q),
    each bin's count plus a half (so that an empty bin does not make it infinite)."""
    bins = set(today) | set(before)
    p = _shares(today, bins, smoothing=0.5)
    q = _shares(before, bins, smoothing=0.5)
    return sum((p[b] - q[b]) * math.log(p[b] / q[b]) for b in bins)


def js_distance(today: Counter, before: Counter) -> float:
    """Jensen-Shannon distance (the square root of the divergence, base 2): 0 same, 1 disjoint."""
    keys = set(today) | set(before)
    p, q = _shares(today, keys), _shares(before, keys)
    m = {k: (p[k] + q[k]) / 2 for k in keys}

    def kl(a: dict) -> float:
        return sum(a[k] * math.log2(a[k] / m[k]) for k in keys if a[k] > 0)

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def rate_difference(today: Counter, before: Counter) -> float:
    """The day's refusal rate minus the reference's."""
    return today[REFUSED] / sum(today.values()) - before[REFUSED] / sum(before.values())


def _shares(counts: Counter, keys: set, smoothing: float = 0.0) -> dict:
    total = sum(counts[k] + smoothing for k in keys)
    return {k: (counts[k] + smoothing) / total for k in keys}


def compare(signal: str, today: Counter, before: Counter) -> tuple[float | None, str]:
    """(the statistic, "") or (None, why it was not computed)."""
    need, need_before = (
        settings.WARDEN_DRIFT_MIN_SAMPLES,
        settings.WARDEN_DRIFT_MIN_REFERENCE_SAMPLES,
    )
    n, m = sum(today.values()), sum(before.values())
    if n < need or m < need_before:
        return (
            None,
            f"too few samples ({n} on the day, {m} in the reference; "
            f"need {need} and {need_before})",
        )
    if signal == DriftSignal.REFUSALS:
        return round(rate_difference(today, before), 4), ""
    if signal == DriftSignal.TOOL_MIX:
        return round(js_distance(today, before), 4), ""
    return round(psi(today, before), 4), ""


def describe(signal: str, counts: Counter) -> str:
    total = sum(counts.values())
    if not total:
        return "none"
    if signal == DriftSignal.REFUSALS:
        return f"{counts[REFUSED] / total:.1%} of {total}"
    if signal == DriftSignal.TOOL_MIX:
        top = counts.most_common(3)
        return ", ".join(f"{name} {n / total:.0%}" for name, n in top)
    mean = sum((b - 0.5) / BINS * n for b, n in counts.items()) / total
    return f"mean ~{mean:.2f} of {total}"


def drift_measure(
    *, day: date, reference: Window | None = None, agents: Iterable[Agent] | None = None
) -> list[Measure]:
    """Each agent's (all, or those given) four signals on `day` against `reference` (by
    default the agent's pinned window, or the WARDEN_DRIFT_REFERENCE_DAYS before the day):
    five queries."""
    chosen = list(
        (
            Agent.objects.filter(pk__in=[a.pk for a in agents])
            if agents is not None
            else Agent.objects
        )
        .select_related("drift_reference")
        .order_by("slug")
    )
    windows = {a.pk: reference or reference_for(a, day) for a in chosen}
    span = Window(
        min([day, *(w.since for w in windows.values())]),
        max([day, *(w.until for w in windows.values())]),
    )
    counts = drift_counts(window=span, agent_ids=[a.pk for a in chosen])
    measures = []
    for agent in chosen:
        reference = windows[agent.pk]
        for signal in SIGNALS:
            per_day = counts.get((agent.pk, signal), {})
            today, before = _sum(per_day, [day]), _sum(per_day, reference.days())
            value, reason = compare(signal, today, before)
            measures.append(
                Measure(agent, signal, day, reference, today, before, value=value, reason=reason)
            )
    return measures


def drift_series(*, agent: Agent, window: Window) -> dict[str, list[Measure]]:
    """For each signal, each day of `window` against its reference (the days before it, or
    the agent's pinned window): for the console's chart, from the same four queries."""
    references = {day: reference_for(agent, day) for day in window.days()}
    span = Window(min(r.since for r in references.values()), window.until)
    counts = drift_counts(window=span, agent_ids=[agent.pk])
    series: dict[str, list[Measure]] = {}
    for signal in SIGNALS:
        per_day = counts.get((agent.pk, signal), {})
        series[signal] = []
        for day in window.days():
            reference = references[day]
            today, before = _sum(per_day, [day]), _sum(per_day, reference.days())
            value, reason = compare(signal, today, before)
            series[signal].append(
                Measure(agent, signal, day, reference, today, before, value=value, reason=reason)
            )
    return series


def _distributions(measure: Measure) -> dict:
    def plain(counts: Counter) -> dict:
        return {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}

    return {"day": plain(measure.today), "reference": plain(measure.before)}


def drift_check(
    *, day: date, reference: Window | None = None, agents: Iterable[Agent] | None = None
) -> list[tuple[Measure, DriftCheck | None]]:
    """Measure every agent (or those given) on `day` and record each signal that had enough
    samples as a DriftCheck; an alert is audited (`agent.drift_detected`) and counted
    (warden_drift_alerts_total). Checking a day again records nothing new: the checks it
    already has stand (and stay acknowledged)."""
    measures = drift_measure(day=day, reference=reference, agents=agents)
    results: list[tuple[Measure, DriftCheck | None]] = []
    alerted: list[tuple[str, str]] = []
    with transaction.atomic(durable=True):
        existing = {(c.agent_id, c.signal): c for c in DriftCheck.objects.filter(day=day)}
        for measure in measures:
            if measure.value is None:
                results.append((measure, existing.get((measure.agent.pk, measure.signal))))
                continue
            check = existing.get((measure.agent.pk, measure.signal))
            if check is None:
                check = DriftCheck.objects.create(
                    agent=measure.agent,
                    day=day,
                    signal=measure.signal,
                    statistic=measure.statistic,
                    value=measure.value,
                    threshold=measure.threshold,
                    alert=measure.alert,
                    samples=measure.samples,
                    reference_samples=measure.reference_samples,
                    reference_since=measure.reference.since,
                    reference_until=measure.reference.until,
                    distributions=_distributions(measure),
                )
                if check.alert:
                    _audit_alert(check, measure)
                    alerted.append((measure.agent.slug, measure.signal))
            results.append((measure, check))
        transaction.on_commit(lambda: _count(alerted))
    return results


def _audit_alert(check: DriftCheck, measure: Measure) -> None:
    audit_record(
        actor=None,
        action="agent.drift_detected",
        target=measure.agent,
        data={
            "check": check.pk,
            "day": check.day.isoformat(),
            "signal": check.signal,
            "statistic": check.statistic,
            "value": check.value,
            "threshold": check.threshold,
            "samples": check.samples,
            "reference": str(measure.reference),
            "reference_samples": check.reference_samples,
            "day_summary": measure.day_summary,
            "reference_summary": measure.reference_summary,
        },
    )


def _count(alerted: list[tuple[str, str]]) -> None:
    for agent, signal in alerted:
        metrics.DRIFT_ALERTS.labels(agent=agent, signal=signal).inc()


class NotAnAlert(Exception):
    """Only an alert, not yet acknowledged, can be acknowledged."""


def drift_acknowledge(*, check: DriftCheck, actor) -> DriftCheck:
    """`actor` has seen the alert (audited `agent.drift_acknowledged`); the console and the
    Prometheus alert (warden_agent_drift_alerting) stop showing it as open. The caller checks
    the permission (agents.acknowledge_driftcheck)."""
    with transaction.atomic(durable=True):
        now = timezone.now()
        updated = DriftCheck.objects.filter(
            pk=check.pk, alert=True, acknowledged_at__isnull=True
        ).update(acknowledged_by=actor, acknowledged_at=now)
        if not updated:
            raise NotAnAlert(f"{check} is not an open drift alert")
        audit_record(
            actor=actor,
            action="agent.drift_acknowledged",
            target=Target("agents.agent", str(check.agent_id), str(check.agent)),
            data={"check": check.pk, "day": check.day.isoformat(), "signal": check.signal},
        )
    check.refresh_from_db()
    return check


def drift_open_alerts() -> list[DriftCheck]:
    return list(
        DriftCheck.objects.filter(alert=True, acknowledged_at__isnull=True)
        .select_related("agent")
        .order_by("-day", "agent__name", "signal")
    )


def drift_reference_pin(
    *, agent: Agent, since: date, until: date, actor, reason: str = ""
) -> DriftReference:
    """Compare the agent's days after `until` with since..until (audited
    `agent.drift_reference_pinned`). The window must have ended: it is a past that was right."""
    window = Window(since, until)  # raises ValueError if it is backwards
    if (until - since).days + 1 > REFERENCE_MOST_DAYS:
        # Every check reads the window day by day: a typo such as 0202-01-01 would make each
        # page and the nightly check walk some 700,000 days.
        raise ValueError(
            f"a reference window is at most {REFERENCE_MOST_DAYS} days: {window} is "
            f"{(until - since).days + 1} days"
        )
    if until >= timezone.localdate():
        raise ValueError(f"a reference window must have ended: {until} is not before today")
    with transaction.atomic(durable=True):
        pinned, _ = DriftReference.objects.update_or_create(
            agent=agent,
            defaults={"since": since, "until": until, "reason": reason, "pinned_by": actor},
        )
        audit_record(
            actor=actor,
            action="agent.drift_reference_pinned",
            target=agent,
            data={"reference": str(window), "reason": reason},
        )
    return pinned


def drift_reference_unpin(*, agent: Agent, actor) -> bool:
    """Back to the days before each day (audited `agent.drift_reference_unpinned`)."""
    with transaction.atomic(durable=True):
        deleted, _ = DriftReference.objects.filter(agent=agent).delete()
        if deleted:
            audit_record(actor=actor, action="agent.drift_reference_unpinned", target=agent)
    return bool(deleted)
