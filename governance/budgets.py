"""Budgets: reserve an estimate before each model call, settle after it, atomically
(DESIGN.md §6, STYLE.md 8).

A reservation is one statement over every budget that applies (the user's, each of the
user's teams', the agent's): it locks their usage rows in budget order, and a hard budget's
row only moves if the estimate still fits beside what is used and reserved, so concurrent calls
can never reserve past a limit together; if one does not fit, nothing moves and the call is
refused before it is made. Settling swaps the estimate for the real use, in one statement in
the transaction of the step that records the call. A call can overspend only by what it used
beyond its estimate.
"""

from __future__ import annotations

import calendar
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import Target, audit_record
from governance.models import Budget, BudgetPeriod, BudgetReservation, BudgetUsage
from governance.policy import BudgetState

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger(__name__)


class BudgetExceeded(Exception):
    """A hard budget has no room for the call; the message names it and when it renews."""


@dataclass
class Reservation:
    key: str
    usage_ids: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.usage_ids)


def period_start(period: str, today: date) -> date:
    return today if period == BudgetPeriod.DAY else today.replace(day=1)


def period_end(period: str, start: date) -> date:
    if period == BudgetPeriod.DAY:
        return start + timedelta(days=1)
    days = calendar.monthrange(start.year, start.month)[1]
    return start + timedelta(days=days)


def budgets_of(user: Any) -> list[int]:
    """The enabled budgets that count a user's use outside any agent: their own and their
    teams' (an MCP client's tool call, which no agent makes)."""
    teams = user.groups.values("pk")
    found = Budget.objects.filter(enabled=True).filter(Q(user=user) | Q(group__in=teams))
    return list(found.order_by("pk").values_list("pk", flat=True))


def budget_state(*, budget_ids: list[int]) -> BudgetState:
    """Whether the budgets leave room now (for the policy's decision at the start of a run)."""
    if not budget_ids:
        return BudgetState.OK
    state = BudgetState.OK
    for usage in _usages_now(budget_ids):
        budget = usage.budget
        if budget.hard and _fraction(budget, usage, reserved=True) >= 1:
            return BudgetState.EXHAUSTED
        if _fraction(budget, usage, reserved=True) * 100 >= budget.notify_at_percent:
            state = BudgetState.SOFT
    return state


def budget_refusal(*, budget_ids: list[int]) -> str:
    """Why the budgets refuse now: the first hard one without room, named."""
    for usage in _usages_now(budget_ids):
        if usage.budget.hard and _fraction(usage.budget, usage, reserved=True) >= 1:
            return _refusal(usage)
    return "the budget for this is used up"


def _usages(budget_ids: list[int]) -> list[BudgetUsage]:
    """This period's usage rows of the budgets, created if missing, in budget order."""
    today = timezone.localdate()
    budgets = list(Budget.objects.filter(pk__in=budget_ids).order_by("pk"))
    BudgetUsage.objects.bulk_create(
        [BudgetUsage(budget=b, period_start=period_start(b.period, today)) for b in budgets],
        ignore_conflicts=True,
    )
    wanted = Q()
    for b in budgets:
        wanted |= Q(budget=b, period_start=period_start(b.period, today))
    return list(BudgetUsage.objects.filter(wanted).select_related("budget").order_by("budget_id"))


# The budget's columns by name, not `b.*`: the statement is prepared (config.settings), and a
# prepared `*` whose table gained a column fails ("cached plan must not change result type").
_BUDGET_COLUMNS = ", ".join(f"b.{f.column}" for f in Budget._meta.concrete_fields)
_USAGES_NOW = f"""
SELECT {_BUDGET_COLUMNS}, u.id AS usage_id, COALESCE(u.used_tokens, 0) AS usage_used_tokens,
    COALESCE(u.used_cost, 0) AS usage_used_cost,
    COALESCE(u.reserved_tokens, 0) AS usage_reserved_tokens,
    COALESCE(u.reserved_cost, 0) AS usage_reserved_cost,
    CASE WHEN b.period = '{BudgetPeriod.DAY}' THEN %(day)s ELSE %(month)s END AS usage_period
FROM governance_budget b
LEFT JOIN governance_budgetusage u ON u.budget_id = b.id
    AND u.period_start = CASE WHEN b.period = '{BudgetPeriod.DAY}' THEN %(day)s ELSE %(month)s END
WHERE b.id = ANY(%(ids)s)
ORDER BY b.id
"""  # noqa: S608 - constants only


def _usages_now(budget_ids: list[int]) -> list[BudgetUsage]:
    """This period's usage of the budgets, in budget order, read in one statement: a period
    without a row yet has used nothing (unsaved rows stand for them; _usages creates them when
    a reservation needs them). One round trip where _usages takes five, at every run's start."""
    today = timezone.localdate()
    params = {
        "ids": list(budget_ids),
        "day": period_start(BudgetPeriod.DAY, today),
        "month": period_start(BudgetPeriod.MONTH, today),
    }
    # raw() sets the query's usage_* columns as attributes, which the model does not declare.
    budgets: Iterable[Any] = Budget.objects.raw(_USAGES_NOW, params)
    return [
        BudgetUsage(
            pk=b.usage_id,
            budget=b,
            period_start=b.usage_period,
            used_tokens=b.usage_used_tokens,
            used_cost=b.usage_used_cost,
            reserved_tokens=b.usage_reserved_tokens,
            reserved_cost=b.usage_reserved_cost,
        )
        for b in budgets
    ]


def _fraction(budget: Budget, usage: BudgetUsage, *, reserved: bool) -> float:
    tokens = usage.used_tokens + (usage.reserved_tokens if reserved else 0)
    cost = usage.used_cost + (usage.reserved_cost if reserved else 0)
    parts = []
    if budget.max_tokens is not None:
        parts.append(tokens / budget.max_tokens if budget.max_tokens else float("inf"))
    if budget.max_cost is not None:
        parts.append(float(cost / budget.max_cost) if budget.max_cost else float("inf"))
    return max(parts, default=0.0)


_RESERVE = f"""
WITH budget AS (
    SELECT b.id, b.hard, b.max_tokens, b.max_cost,
        CASE WHEN b.period = '{BudgetPeriod.DAY}' THEN %(day)s ELSE %(month)s END AS start
    FROM governance_budget b WHERE b.id = ANY(%(ids)s)
), period AS (
    SELECT u.id, u.budget_id FROM budget
    JOIN governance_budgetusage u ON u.budget_id = budget.id AND u.period_start = budget.start
), pending AS (
    SELECT u.id, u.budget_id, budget.hard AND NOT (
        (budget.max_tokens IS NULL
            OR u.used_tokens + u.reserved_tokens + %(tokens)s <= budget.max_tokens)
        AND (budget.max_cost IS NULL
            OR u.used_cost + u.reserved_cost + %(cost)s <= budget.max_cost)) AS no_room
    FROM governance_budgetusage u
    JOIN budget ON u.budget_id = budget.id AND u.period_start = budget.start
    WHERE NOT EXISTS (
        SELECT 1 FROM governance_budgetreservation r WHERE r.key = %(key)s AND r.usage_id = u.id)
    ORDER BY u.budget_id
    FOR UPDATE OF u
), verdict AS (
    SELECT (SELECT count(*) FROM budget) - (SELECT count(*) FROM period) AS missing,
        (SELECT min(budget_id) FROM pending WHERE no_room) AS refused
), moved AS (
    UPDATE governance_budgetusage u
    SET reserved_tokens = u.reserved_tokens + %(tokens)s, reserved_cost = u.reserved_cost + %(cost)s
    FROM pending, verdict
    WHERE u.id = pending.id AND verdict.missing = 0 AND verdict.refused IS NULL
    RETURNING u.id
), held AS (
    INSERT INTO governance_budgetreservation (key, usage_id, tokens, cost, created_at)
    SELECT %(key)s, id, %(tokens)s, %(cost)s, statement_timestamp() FROM moved
)
SELECT missing, refused, ARRAY(SELECT id FROM period ORDER BY budget_id) FROM verdict
"""  # noqa: S608 - constants only


def budget_reserve(*, budget_ids: list[int], key: str, tokens: int, cost: Decimal) -> Reservation:
    """Hold `tokens` and `cost` on every budget for the call `key`, or raise BudgetExceeded
    having held nothing. Reserving the same key again (a retried step) holds nothing more.

    One statement, all or nothing (_RESERVE): it locks this period's usage rows that do not
    hold the call yet, in budget order (so two calls never wait on each other in a cycle),
    checks each hard budget against the row as it stands once locked, and only if every one
    has room adds the estimate to each and records the reservations. A budget without a row for
    this period yet gets one first (once a period), and the statement is run again."""
    if not budget_ids:
        return Reservation(key)
    today = timezone.localdate()
    params: dict[str, Any] = {
        "ids": sorted(budget_ids),
        "day": period_start(BudgetPeriod.DAY, today),
        "month": period_start(BudgetPeriod.MONTH, today),
        "key": key,
        "tokens": tokens,
        "cost": cost,
    }
    with connection.cursor() as cursor:
        cursor.execute(_RESERVE, params)
        missing, refused, usage_ids = cursor.fetchone()
        if missing:
            _usages(budget_ids)  # creates this period's rows
            cursor.execute(_RESERVE, params)
            missing, refused, usage_ids = cursor.fetchone()
    if refused is not None:
        raise BudgetExceeded(_refusal(_usages_now([refused])[0]))
    if missing:  # a budget deleted between the two statements: nothing was held
        raise BudgetExceeded("a budget that applies to this changed; try again")
    return Reservation(key, list(usage_ids))


def _refusal(usage: BudgetUsage) -> str:
    budget = usage.budget
    limits = []
    if budget.max_tokens is not None:
        limits.append(
            f"{usage.used_tokens + usage.reserved_tokens:,} of {budget.max_tokens:,} tokens"
        )
    if budget.max_cost is not None:
        limits.append(f"${usage.used_cost + usage.reserved_cost:.2f} of ${budget.max_cost:.2f}")
    renews = period_end(budget.period, usage.period_start)
    return (
        f"the {_PERIODIC[budget.period]} budget {budget.name!r} has no room for "
        f"this ({' and '.join(limits)} used or in use); it renews on {renews:%Y-%m-%d}"
    )


_PERIODIC: dict[str, str] = {BudgetPeriod.DAY: "daily", BudgetPeriod.MONTH: "monthly"}

_SETTLE = f"""
WITH held AS (
    DELETE FROM governance_budgetreservation WHERE key = %(key)s
    RETURNING usage_id, tokens, cost
), locked AS (
    SELECT u.id, held.tokens, held.cost
    FROM governance_budgetusage u JOIN held ON held.usage_id = u.id
    ORDER BY u.budget_id
    FOR UPDATE OF u
), settled AS (
    UPDATE governance_budgetusage u
    SET reserved_tokens = GREATEST(0, u.reserved_tokens - locked.tokens),
        reserved_cost = GREATEST(0, u.reserved_cost - locked.cost),
        used_tokens = u.used_tokens + %(tokens)s, used_cost = u.used_cost + %(cost)s
    FROM locked WHERE u.id = locked.id
    RETURNING u.id, u.budget_id, u.period_start, u.used_tokens, u.used_cost, u.notified
)
SELECT {_BUDGET_COLUMNS}, s.id, s.period_start, s.used_tokens, s.used_cost
FROM settled s JOIN governance_budget b ON b.id = s.budget_id
WHERE NOT s.notified
ORDER BY b.id
"""  # noqa: S608 - constants only
_BUDGET_FIELDS = [f.attname for f in Budget._meta.concrete_fields]


def budget_settle(*, key: str, tokens: int, cost: Decimal) -> None:
    """Replace the call's reservations by what it used (call it in the step's transaction).
    Tells a budget's subject, once a period, when use passes the budget's notify mark.

    One statement (_SETTLE): it takes the call's reservations away, locks their usage rows in
    budget order as budget_reserve does, moves the estimate to what was used, and returns the
    rows whose subject has not been told yet this period. Settling a key twice (a retry, the
    release job) settles once: the second finds no reservation."""
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(_SETTLE, {"key": key, "tokens": tokens, "cost": cost})
        rows = cursor.fetchall()
        width = len(_BUDGET_FIELDS)
        for row in rows:
            budget = Budget.from_db(connection.alias, _BUDGET_FIELDS, row[:width])
            usage_id, start, used_tokens, used_cost = row[width:]
            usage = BudgetUsage(
                pk=usage_id,
                budget=budget,
                period_start=start,
                used_tokens=used_tokens,
                used_cost=used_cost,
            )
            _notify_threshold(usage)


def _notify_threshold(usage: BudgetUsage) -> None:
    budget = usage.budget
    used = _fraction(budget, usage, reserved=False)
    if used * 100 < budget.notify_at_percent:
        return
    if not BudgetUsage.objects.filter(pk=usage.pk, notified=False).update(notified=True):
        return  # another settle told them
    audit_record(
        actor=None,
        action="budget.threshold_reached",
        target=Target.of(budget),
        data={
            "percent_used": round(used * 100, 1),
            "notify_at_percent": budget.notify_at_percent,
            "period_start": usage.period_start.isoformat(),
        },
    )
    transaction.on_commit(functools.partial(_tell, budget.pk), robust=True)


def _tell(budget_id: int) -> None:
    from governance.tasks import budget_notify_task

    budget_notify_task.delay(budget_id)


def budget_reservations_release(*, older_than: timedelta) -> int:
    """Settle, at their estimate, reservations whose call never settled (the run ended on an
    internal error between reserving and settling). Returns how many calls."""
    cutoff = timezone.now() - older_than
    keys = set(
        BudgetReservation.objects.filter(created_at__lt=cutoff).values_list("key", flat=True)
    )
    for key in keys:
        held = BudgetReservation.objects.filter(key=key).first()
        if held is not None:
            budget_settle(key=key, tokens=held.tokens, cost=held.cost)
    return len(keys)


class BudgetUse(TypedDict):
    """A row of `usage_for`."""

    budget: str
    period: str
    since: date
    renews: date
    used_tokens: int
    max_tokens: int | None
    used_cost: Decimal
    max_cost: Decimal | None
    percent: float


def usage_for(user: User | AnonymousUser) -> list[BudgetUse]:
    """This period's use of every budget that applies to `user` (theirs and their teams')."""
    ids = sorted(
        Budget.objects.filter(enabled=True)
        .filter(Q(user=user.pk) | Q(group__user=user.pk))
        .values_list("pk", flat=True)
        .distinct()
    )
    rows: list[BudgetUse] = []
    for usage in _usages(ids) if ids else []:
        budget = usage.budget
        rows.append(
            {
                "budget": budget.name,
                "period": budget.period,
                "since": usage.period_start,
                "renews": period_end(budget.period, usage.period_start),
                "used_tokens": usage.used_tokens,
                "max_tokens": budget.max_tokens,
                "used_cost": usage.used_cost,
                "max_cost": budget.max_cost,
                "percent": round(_fraction(budget, usage, reserved=False) * 100, 1),
            }
        )
    return rows
