"""Budgets: reserve an estimate before each model call, settle after it, atomically
(DESIGN.md §6, STYLE.md 8).

A reservation is one conditional UPDATE per budget that applies (the user's, each of the
user's teams', the agent's), in one transaction, in budget order: a hard budget's row only
moves if the estimate still fits beside what is used and reserved, so concurrent calls can
never reserve past a limit together; the first that does not fit rolls the whole reservation
back and is refused before the call. Settling swaps the estimate for the real use, in the
transaction of the step that records the call. A call can overspend only by what it used
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


_RESERVE = """
UPDATE governance_budgetusage AS u
SET reserved_tokens = u.reserved_tokens + %(tokens)s, reserved_cost = u.reserved_cost + %(cost)s
FROM governance_budget AS b
WHERE u.id = %(usage)s AND b.id = u.budget_id AND (NOT b.hard OR (
    (b.max_tokens IS NULL OR u.used_tokens + u.reserved_tokens + %(tokens)s <= b.max_tokens)
    AND (b.max_cost IS NULL OR u.used_cost + u.reserved_cost + %(cost)s <= b.max_cost)))
RETURNING u.id
"""


def budget_reserve(*, budget_ids: list[int], key: str, tokens: int, cost: Decimal) -> Reservation:
    """Hold `tokens` and `cost` on every budget for the call `key`, or raise BudgetExceeded
    having held nothing. Reserving the same key again (a retried step) holds nothing more."""
    if not budget_ids:
        return Reservation(key)
    with transaction.atomic():
        usages = _usages(budget_ids)
        held = set(
            BudgetReservation.objects.filter(key=key, usage__in=usages).values_list(
                "usage_id", flat=True
            )
        )
        with connection.cursor() as cursor:
            for usage in usages:
                if usage.pk in held:
                    continue
                cursor.execute(_RESERVE, {"usage": usage.pk, "tokens": tokens, "cost": cost})
                if cursor.fetchone() is None:
                    raise BudgetExceeded(_refusal(usage))
        BudgetReservation.objects.bulk_create(
            [
                BudgetReservation(key=key, usage=usage, tokens=tokens, cost=cost)
                for usage in usages
                if usage.pk not in held
            ]
        )
    return Reservation(key, [u.pk for u in usages])


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

_SETTLE = """
UPDATE governance_budgetusage
SET reserved_tokens = GREATEST(0, reserved_tokens - %(reserved_tokens)s),
    reserved_cost = GREATEST(0, reserved_cost - %(reserved_cost)s),
    used_tokens = used_tokens + %(tokens)s, used_cost = used_cost + %(cost)s
WHERE id = %(usage)s
"""


def budget_settle(*, key: str, tokens: int, cost: Decimal) -> None:
    """Replace the call's reservations by what it used (call it in the step's transaction).
    Tells a budget's subject, once a period, when use passes the budget's notify mark."""
    with transaction.atomic():
        reservations = list(
            # in budget order, as budget_reserve locks them: two calls never wait on each other
            BudgetReservation.objects.select_for_update()
            .filter(key=key)
            .order_by("usage__budget_id")
        )
        with connection.cursor() as cursor:
            for held in reservations:  # the same order: usage rows lock as in budget_reserve
                cursor.execute(
                    _SETTLE,
                    {
                        "usage": held.usage_id,
                        "reserved_tokens": held.tokens,
                        "reserved_cost": held.cost,
                        "tokens": tokens,
                        "cost": cost,
                    },
                )
        BudgetReservation.objects.filter(pk__in=[r.pk for r in reservations]).delete()
        _notify_thresholds([r.usage_id for r in reservations])


def _notify_thresholds(usage_ids: list[int]) -> None:
    for usage in BudgetUsage.objects.filter(pk__in=usage_ids, notified=False).select_related(
        "budget"
    ):
        budget = usage.budget
        used = _fraction(budget, usage, reserved=False)
        if used * 100 < budget.notify_at_percent:
            continue
        if not BudgetUsage.objects.filter(pk=usage.pk, notified=False).update(notified=True):
            continue  # another settle told them
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
