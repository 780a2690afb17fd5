"""Releases: a candidate version serving a share of an agent's conversations (issue 25).

- Who gets the candidate: a conversation keeps the version its first run under the release
  was given (runs record their version), so it never changes version mid-thread. That first
  choice is a hash of the release and the conversation, or, for a conversation that is not
  saved yet (its first message), a draw at the release's share; either way the run records it.
- Kinds: a canary is promoted by the judge once it has run `min_duration` and `min_runs`
  settled runs (finished, or waiting for a reviewer) and its evaluation passed; an A/B release
  serves both versions until a person
  promotes or stops it. The guards (limits on the candidate's metrics) roll back either kind,
  once the candidate has `min_runs` settled runs: a failing candidate is not left serving for
  `min_duration`.
- Ending: promoting makes the candidate live (agents.versions.version_release); rolling back
  restores the baseline's config as a new live version (agents.versions.version_rollback);
  stopping ends the release with the baseline still live and the agent as it is. Each is
  audited, counted (telemetry.metrics.RELEASES_ENDED); the judge's own decisions are also told
  to the agent's owners and the governance admins (websocket and email).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Avg, Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.db.models.aggregates import Aggregate
from django.db.models.fields import FloatField
from django.utils import timezone

from agents.models import (
    FINAL_STATES,
    Agent,
    AgentVersion,
    Conversation,
    Feedback,
    Rating,
    Release,
    ReleaseKind,
    ReleaseState,
    Run,
    RunState,
)
from agents.versions import VersionError, version_release, version_rollback
from audit.services import Target, audit_record
from governance.access import is_active
from governance.models import ApprovalRequest, Escalation
from telemetry import metrics

logger = logging.getLogger(__name__)

NO_EVALUATION = "no evaluation of it has passed"
# A run whose outcome is known: it ended, or waits for a reviewer (an approval, a held answer).
SETTLED_STATES = (*FINAL_STATES, RunState.AWAITING_APPROVAL, RunState.AWAITING_REVIEW)


class ReleaseError(Exception):
    """A release that cannot start or end as asked; the message is for people."""


# ---------------------------------------------------------------------------------------------
# Serving


def release_candidate(*, agent: Agent, conversation: Conversation | None) -> AgentVersion | None:
    """The candidate version that serves a new run of `agent` in `conversation` (None or
    unsaved: its first message), if a running release gives it to that conversation. One
    query (agents.versions.version_serving asks only when a release runs: none then)."""
    running = Release.objects.filter(agent_id=agent.pk, state=ReleaseState.RUNNING)
    conversation_id = conversation.pk if conversation is not None else None
    if conversation_id is not None:
        # The version its first run under this release was given, if it had one.
        first = Run.objects.filter(
            conversation_id=conversation_id, created_at__gte=OuterRef("started_at")
        ).order_by("created_at", "pk")
        before = Run.objects.filter(
            conversation_id=conversation_id, created_at__lt=OuterRef("started_at")
        )
        running = running.annotate(
            given=Subquery(first.values("version_id")[:1]), earlier=Exists(before)
        )
    release = running.select_related("candidate__route").order_by().first()
    if release is None:
        return None
    given = getattr(release, "given", None)
    if given is not None:
        return release.candidate if given == release.candidate_id else None
    if getattr(release, "earlier", False):  # begun before the release: it keeps its version
        return None
    if conversation_id is not None:
        chosen = release_bucket(release.pk, conversation_id) < release.share
    else:  # its run records the draw, and its next runs follow that run
        chosen = secrets.randbelow(100) < release.share
    return release.candidate if chosen else None


def release_bucket(release_id: int, conversation_id: int) -> int:
    """0-99: the conversation's place in the release (the candidate serves those below its
    share). A hash, so that one release's conversations are not another's."""
    digest = hashlib.sha256(f"release:{release_id}:conversation:{conversation_id}".encode())
    return int.from_bytes(digest.digest()[:8], "big") % 100


# ---------------------------------------------------------------------------------------------
# Starting and ending


def release_start(
    *,
    agent: Agent,
    candidate: AgentVersion,
    actor: Any,
    share: int,
    kind: str = ReleaseKind.CANARY,
    max_error_rate: Decimal | None = None,
    max_escalation_rate: Decimal | None = None,
    max_held_rate: Decimal | None = None,
    max_thumbs_down_rate: Decimal | None = None,
    max_p95_latency_ms: int | None = None,
    max_cost_per_run: Decimal | None = None,
    min_runs: int = 20,
    min_duration: timedelta = timedelta(hours=1),
) -> Release:
    """Start serving `candidate` (a version of `agent` that is not live) to `share` percent
    of its conversations, beside the live version. ReleaseError (nothing written) when the
    candidate is not the agent's, is live, cannot be served, or a release already runs."""
    if kind not in ReleaseKind.values:
        raise ReleaseError(f"the kind of release is one of {', '.join(ReleaseKind.values)}")
    if not isinstance(share, int) or not 1 <= share <= 99:
        raise ReleaseError("the share is a whole percentage from 1 to 99")
    guards = {
        "max_error_rate": max_error_rate,
        "max_escalation_rate": max_escalation_rate,
        "max_held_rate": max_held_rate,
        "max_thumbs_down_rate": max_thumbs_down_rate,
        "max_p95_latency_ms": max_p95_latency_ms,
        "max_cost_per_run": max_cost_per_run,
    }
    for name, limit in guards.items():
        if limit is not None and limit < 0:
            raise ReleaseError(f"{GUARDS[name].label}: a limit is not negative")
    if min_runs < 0 or min_duration < timedelta(0):
        raise ReleaseError("the minimum runs and duration are not negative")
    try:
        with transaction.atomic():
            # The live version cannot change under the check (versions lock the agent too).
            live_id = (
                Agent.objects.select_for_update()
                .filter(pk=agent.pk)
                .values_list("live_version", flat=True)
                .get()
            )
            release_refusal(agent=agent, candidate=candidate, live_id=live_id)
            release = Release.objects.create(
                agent=agent,
                candidate=candidate,
                baseline_id=live_id,
                kind=kind,
                share=share,
                min_runs=min_runs,
                min_duration=min_duration,
                started_by=actor if is_active(actor) else None,
                **guards,
            )
            audit_record(
                actor=actor,
                action="release.started",
                target=Target.of(agent),
                data={
                    "release": release.pk,
                    "kind": kind,
                    "candidate": candidate.number,
                    "baseline": release.baseline.number,
                    "share": share,
                    "guards": {k: v for k, v in guards.items() if v is not None},
                    "min_runs": min_runs,
                    "min_duration_seconds": int(min_duration.total_seconds()),
                },
            )
    except IntegrityError as exc:  # another release started at the same moment
        raise ReleaseError(f"a release of {agent.name} is already running") from exc
    return release


def release_refusal(*, agent: Agent, candidate: AgentVersion, live_id: int | None) -> None:
    """Raise ReleaseError if `candidate` cannot be released on `agent` now (the add form asks
    too, to say so beside its fields)."""
    if candidate.agent_id != agent.pk:
        raise ReleaseError(f"v{candidate.number} is not a version of {agent.name}")
    if live_id is None:
        raise ReleaseError(f"{agent.name} has no live version to compare the candidate with")
    if candidate.pk == live_id:
        raise ReleaseError(f"v{candidate.number} is already live: it serves every run")
    if candidate.route_id is None:
        raise ReleaseError(f"v{candidate.number}'s model route was deleted: it cannot serve")
    if Release.objects.filter(agent_id=agent.pk, state=ReleaseState.RUNNING).exists():
        raise ReleaseError(f"a release of {agent.name} is already running")


def release_promote(*, release: Release, actor: Any, reason: str = "") -> Release:
    """The candidate serves every run from now on (it becomes the live version). A person may
    promote at any time; the audit event names the conditions the judge would have waited for
    (`unmet`)."""
    with transaction.atomic():
        release = _ending(release)
        unmet = promotion_unmet(release, release_metrics(release))
        version_release(agent=release.agent, version=release.candidate, actor=actor)
        _end(release, ReleaseState.PROMOTED, actor=actor, reason=reason or "promoted")
        audit_record(
            actor=actor,
            action="release.promoted",
            target=Target.of(release.agent),
            data={**_about(release), "reason": release.ended_reason, "unmet": unmet},
        )
        _counted(release, "evaluation" if actor is None else "person")
        if actor is None:  # the judge's decision: its owners hear of it
            _notify_after_commit(release.pk)
    return release


def release_stop(*, release: Release, actor: Any, reason: str = "") -> Release:
    """End the release: the candidate stops serving, the live version serves every run again,
    and the agent is left as it is."""
    with transaction.atomic():
        release = _ending(release)
        _end(release, ReleaseState.STOPPED, actor=actor, reason=reason or "stopped")
        audit_record(
            actor=actor,
            action="release.stopped",
            target=Target.of(release.agent),
            data={**_about(release), "reason": release.ended_reason},
        )
        _counted(release, "person")
    return release


def release_supersede(*, agent: Agent, version: AgentVersion, actor: Any) -> Release | None:
    """Stop the agent's running release, if one runs, because `version` was just made live by
    other means (a change served at once, a rollback): its baseline no longer serves, so its
    metrics would compare the candidate with nothing. Returns the release it stopped."""
    running = Release.objects.filter(agent_id=agent.pk, state=ReleaseState.RUNNING).first()
    if running is None:
        return None
    return release_stop(
        release=running, actor=actor, reason=f"superseded: v{version.number} was made live"
    )


@dataclass(frozen=True)
class Crossed:
    """A guard the candidate's metric went past: which, its value and the limit."""

    guard: str
    value: Decimal
    limit: Decimal

    @property
    def label(self) -> str:
        return GUARDS[self.guard].label

    def words(self) -> str:
        unit = GUARDS[self.guard].unit
        return f"{self.label} {self.value}{unit} is over its limit of {self.limit}{unit}"


def release_rollback(
    *, release: Release, actor: Any, reason: str = "", crossed: Crossed | None = None
) -> Release:
    """The candidate stops serving and the agent goes back to the baseline's config: its row
    and live version (agents.versions.version_rollback, a new version). `crossed`: the judge
    rolled it back for that guard (said in the audit event and told to the agent's owners)."""
    with transaction.atomic():
        release = _ending(release)
        why = reason or (crossed.words() if crossed else "rolled back")
        try:
            with transaction.atomic():
                version_rollback(
                    agent=release.agent,
                    version=release.baseline,
                    actor=actor,
                    reason=f"Release of v{release.candidate.number} rolled back: {why}",
                )
        except VersionError as exc:  # the candidate stops serving all the same
            why = f"{why} (the agent's config was not restored: {exc})"
        _end(release, ReleaseState.ROLLED_BACK, actor=actor, reason=why)
        data: dict[str, Any] = {**_about(release), "reason": why}
        if crossed is not None:
            data.update(metric=crossed.guard, value=str(crossed.value), limit=str(crossed.limit))
        audit_record(
            actor=actor, action="release.rolled_back", target=Target.of(release.agent), data=data
        )
        _counted(release, crossed.guard if crossed else "person")
        if crossed is not None:
            _notify_after_commit(release.pk)
    return release


def _ending(release: Release) -> Release:
    """The release, locked, if it still runs; ReleaseError if it ended meanwhile."""
    locked = (
        Release.objects.select_for_update(of=("self",))
        .select_related("agent", "candidate", "baseline")
        .get(pk=release.pk)
    )
    if locked.state != ReleaseState.RUNNING:
        raise ReleaseError(f"the release has ended already ({locked.get_state_display().lower()})")
    return locked


def _end(release: Release, state: str, *, actor: Any, reason: str) -> None:
    release.state = state
    release.ended_at = timezone.now()
    release.ended_by = actor if is_active(actor) else None
    release.ended_reason = reason[:2000]
    release.save(update_fields=["state", "ended_at", "ended_by", "ended_reason"])


def _about(release: Release) -> dict[str, Any]:
    return {
        "release": release.pk,
        "kind": release.kind,
        "candidate": release.candidate.number,
        "baseline": release.baseline.number,
        "share": release.share,
    }


def _counted(release: Release, cause: str) -> None:
    slug, state = release.agent.slug, release.state
    transaction.on_commit(
        lambda: metrics.RELEASES_ENDED.labels(agent=slug, state=state, cause=cause).inc()
    )


def _notify_after_commit(release_id: int) -> None:
    from agents.tasks import release_notify_task

    transaction.on_commit(lambda: release_notify_task.delay(release_id))


# ---------------------------------------------------------------------------------------------
# Metrics


class Percentile(Aggregate):
    """PostgreSQL's percentile_cont: the value below which a fraction of the rows fall."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, *, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(fraction)
        super().__init__(expression, fraction=f"{float(fraction):.3f}", **extra)


def _percent(part: int, whole: int) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part * 100) / Decimal(whole)).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class VersionMetrics:
    """One version's runs since the release started (until it ended): counts, and rates in
    percent (None before there is anything to divide by)."""

    version: AgentVersion
    runs: int = 0  # started
    settled: int = 0  # finished, or waiting for a reviewer: what the run did is known
    finished: int = 0
    failed: int = 0
    escalated: int = 0  # asked a reviewer: a tool call's approval, or a held answer
    held: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    rated_down: int = 0  # runs someone rated not helpful
    p50_latency_ms: int | None = None
    p95_latency_ms: int | None = None
    cost_per_run: Decimal | None = None

    @property
    def error_rate(self) -> Decimal | None:
        return _percent(self.failed, self.finished)

    @property
    def escalation_rate(self) -> Decimal | None:
        return _percent(self.escalated, self.settled)

    @property
    def held_rate(self) -> Decimal | None:
        return _percent(self.held, self.settled)

    @property
    def thumbs_down_rate(self) -> Decimal | None:
        return _percent(self.rated_down, self.finished)


@dataclass(frozen=True)
class Guard:
    label: str
    value: Callable[[VersionMetrics], Decimal | int | None]
    unit: str = "%"


GUARDS: dict[str, Guard] = {
    "max_error_rate": Guard("error rate", lambda m: m.error_rate),
    "max_escalation_rate": Guard("escalation rate", lambda m: m.escalation_rate),
    "max_held_rate": Guard("held-answer rate", lambda m: m.held_rate),
    "max_thumbs_down_rate": Guard("thumbs-down rate", lambda m: m.thumbs_down_rate),
    "max_p95_latency_ms": Guard("p95 latency", lambda m: m.p95_latency_ms, " ms"),
    "max_cost_per_run": Guard("cost per run", lambda m: m.cost_per_run, ""),
}


@dataclass(frozen=True)
class ReleaseMetrics:
    candidate: VersionMetrics
    baseline: VersionMetrics


def _served(release: Release) -> QuerySet[Run]:
    runs = Run.objects.filter(
        agent_id=release.agent_id,
        version_id__in=[release.candidate_id, release.baseline_id],
        created_at__gte=release.started_at,
        sandbox=False,  # an evaluation's runs serve nobody
    )
    if release.ended_at is not None:
        runs = runs.filter(created_at__lte=release.ended_at)
    return runs


def release_metrics(release: Release) -> ReleaseMetrics:
    """Each version's live metrics since the release started (until it ended), side by side.
    Two queries: the runs, then their feedback."""
    finished = Q(state__in=FINAL_STATES)
    settled = Q(state__in=SETTLED_STATES)
    held = Exists(Escalation.objects.filter(run_id=OuterRef("pk")))
    asked = Exists(ApprovalRequest.objects.filter(run_id=OuterRef("pk")))
    down = Exists(Feedback.objects.filter(run_id=OuterRef("pk"), rating=Rating.DOWN))
    rows = (
        _served(release)
        .order_by()
        .values("version_id")
        .annotate(
            runs=Count("pk"),
            settled=Count("pk", filter=settled),
            finished=Count("pk", filter=finished),
            failed=Count("pk", filter=Q(state=RunState.FAILED)),
            escalated=Count("pk", filter=(Q(held) | Q(asked)) & settled),
            held=Count("pk", filter=Q(held) & settled),
            rated_down=Count("pk", filter=Q(down) & finished),
            p50=Percentile("latency_ms", fraction=0.5, filter=finished),
            p95=Percentile("latency_ms", fraction=0.95, filter=finished),
            cost=Avg("cost", filter=finished),
        )
    )
    votes = (
        Feedback.objects.filter(run__in=_served(release))
        .order_by()
        .values("run__version_id")
        .annotate(
            up=Count("pk", filter=Q(rating=Rating.UP)),
            down=Count("pk", filter=Q(rating=Rating.DOWN)),
        )
    )
    counted = {row["version_id"]: row for row in rows}
    voted = {row["run__version_id"]: row for row in votes}

    def of(version: AgentVersion) -> VersionMetrics:
        row = counted.get(version.pk)
        vote = voted.get(version.pk, {})
        if row is None:
            return VersionMetrics(version=version)
        return VersionMetrics(
            version=version,
            runs=row["runs"],
            settled=row["settled"],
            finished=row["finished"],
            failed=row["failed"],
            escalated=row["escalated"],
            held=row["held"],
            rated_down=row["rated_down"],
            thumbs_up=vote.get("up", 0),
            thumbs_down=vote.get("down", 0),
            p50_latency_ms=None if row["p50"] is None else round(row["p50"]),
            p95_latency_ms=None if row["p95"] is None else round(row["p95"]),
            cost_per_run=None if row["cost"] is None else row["cost"].quantize(Decimal("1e-6")),
        )

    return ReleaseMetrics(candidate=of(release.candidate), baseline=of(release.baseline))


# ---------------------------------------------------------------------------------------------
# Judging


def guard_crossed(release: Release, candidate: VersionMetrics) -> Crossed | None:
    """The first guard the candidate's metrics went past, once it has `min_runs` settled
    runs; None if none did (or too soon to say)."""
    if candidate.settled < max(release.min_runs, 1):
        return None
    for name, guard in GUARDS.items():
        limit = getattr(release, name)
        value = guard.value(candidate)
        if limit is not None and value is not None and value > limit:
            return Crossed(name, Decimal(value), Decimal(limit))
    return None


def promotion_unmet(release: Release, metrics: ReleaseMetrics, now: Any = None) -> list[str]:
    """Why the judge would not promote the candidate now (empty: it would)."""
    unmet = []
    if release.kind != ReleaseKind.CANARY:
        unmet.append("an A/B release is promoted by a person")
    if metrics.candidate.settled < release.min_runs:
        unmet.append(f"{metrics.candidate.settled} of {release.min_runs} runs settled")
    ran = (now or timezone.now()) - release.started_at
    if ran < release.min_duration:
        unmet.append(f"it has run {_duration(ran)} of {_duration(release.min_duration)}")
    if not evaluation_passed(release.candidate):
        unmet.append(NO_EVALUATION)
    return unmet


def evaluation_passed(version: AgentVersion) -> bool:
    """Whether `version` passed its agent's evaluations (each set's newest finished one)."""
    from agents.evaluation.selectors import version_evaluation_passed

    return version_evaluation_passed(version)


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def release_judge(release: Release) -> str:
    """Judge one running release: roll it back if a guard is crossed, promote a canary that is
    ready; "kept" otherwise. Its decisions are Warden's own (no actor)."""
    metrics = release_metrics(release)
    crossed = guard_crossed(release, metrics.candidate)
    if crossed is not None:
        release_rollback(release=release, actor=None, crossed=crossed)
        return ReleaseState.ROLLED_BACK
    if not promotion_unmet(release, metrics):
        release_promote(
            release=release,
            actor=None,
            reason=f"ran {_duration(timezone.now() - release.started_at)}, "
            f"{metrics.candidate.settled} runs, within its guards, evaluation passed",
        )
        return ReleaseState.PROMOTED
    return "kept"


def releases_judge() -> dict[int, str]:
    """The beat job: judge every running release (each on its own: one that fails is logged
    and the others are still judged)."""
    outcomes: dict[int, str] = {}
    running = Release.objects.filter(state=ReleaseState.RUNNING).select_related(
        "agent", "candidate", "baseline"
    )
    for release in running:
        try:
            outcomes[release.pk] = release_judge(release)
        except ReleaseError:  # a person ended it meanwhile
            outcomes[release.pk] = "ended"
        except Exception:
            logger.exception("release %s could not be judged", release.pk)
            outcomes[release.pk] = "error"
    return outcomes


# ---------------------------------------------------------------------------------------------
# Who manages releases, and telling them


def release_agents(user: Any) -> QuerySet[Agent]:
    """The agents whose releases `user` may start, see and end: those they may change (the
    model-wide permission, or guardian's on the agent, directly or through a group)."""
    from guardian.shortcuts import get_objects_for_user

    if not is_active(user) or not user.is_staff:
        return Agent.objects.none()
    return get_objects_for_user(user, "agents.change_agent", klass=Agent, accept_global_perms=True)


def release_owners(agent: Agent) -> list[Any]:
    """Who is told of the judge's decisions: those who may change the agent (by a grant on it,
    directly or through a group) and the governance admins; active ones."""
    from django.contrib.auth import get_user_model
    from guardian.shortcuts import get_users_with_perms

    from governance import roles

    granted: QuerySet[Any] = get_users_with_perms(  # type: ignore[assignment]
        agent, only_with_perms_in=["change_agent"], with_group_users=True
    )
    owners = granted.values_list("pk", flat=True)
    people = get_user_model().objects.filter(is_active=True)
    return list(
        people.filter(Q(pk__in=list(owners)) | Q(groups__name=roles.GOVERNANCE_ADMIN))
        .distinct()
        .order_by("pk")
    )


def release_notify(release_id: int) -> int:
    """Tell the agent's owners (release_owners) that the judge rolled back or promoted its
    release: an event on their open pages and an email. The number of emails sent."""
    from django.conf import settings
    from django.core.mail import send_mail

    from governance.notify import user_notify

    release = (
        Release.objects.filter(pk=release_id)
        .select_related("agent", "candidate", "baseline")
        .first()
    )
    if release is None or release.state == ReleaseState.RUNNING:
        return 0
    agent = release.agent
    if release.state == ReleaseState.ROLLED_BACK:
        subject = f"[Warden] {agent.name}: v{release.candidate.number} was rolled back"
        body = (
            f"The release of {agent.name} v{release.candidate.number} was rolled back: "
            f"{release.ended_reason}.\nIts runs are served by v{release.baseline.number}'s "
            "configuration again."
        )
    else:
        subject = f"[Warden] {agent.name}: v{release.candidate.number} was promoted"
        body = (
            f"{agent.name} v{release.candidate.number} now serves every run: "
            f"{release.ended_reason}."
        )
    people = release_owners(agent)
    event = {
        "type": f"release.{release.state}",
        "agent": agent.slug,
        "candidate": release.candidate.number,
        "reason": release.ended_reason,
    }
    for person in people:
        user_notify(person.pk, event)
    recipients = sorted({p.email for p in people if p.email})
    if recipients:
        send_mail(
            subject=subject,
            message=body,
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
        )
    return len(recipients)
