"""The admin console's dashboard: what the governance team checks first, in figures and small
server-rendered SVG charts (no script, nothing fetched from elsewhere).

Each figure is one aggregate query over the window (14 days by default).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.contrib import admin
from django.contrib.auth.models import Group
from django.db.models import Count, F, Min, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from agents.models import Run, RunState, RunStep, StepKind
from governance import roles
from governance.models import ApprovalRequest, Escalation

FAILED = (RunState.FAILED, RunState.REJECTED)


def dashboard(*, days: int = 14) -> dict:
    now = timezone.now()
    # Days as TruncDate cuts them: in the current time zone.
    since = timezone.localtime(now - timedelta(days=days - 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    runs = Run.objects.filter(created_at__gte=since)
    per_day = {
        row["day"]: row
        for row in runs.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(runs=Count("pk"), failures=Count("pk", filter=Q(state__in=FAILED)))
    }
    dates = [(since + timedelta(days=i)).date() for i in range(days)]
    series = [
        (d, per_day.get(d, {}).get("runs", 0), per_day.get(d, {}).get("failures", 0)) for d in dates
    ]
    pending = ApprovalRequest.objects.filter(status="pending")
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    ages = pending.aggregate(
        under_hour=Count("pk", filter=Q(created_at__gt=now - timedelta(hours=1))),
        under_day=Count(
            "pk",
            filter=Q(
                created_at__lte=now - timedelta(hours=1), created_at__gt=now - timedelta(days=1)
            ),
        ),
        older=Count("pk", filter=Q(created_at__lte=now - timedelta(days=1))),
    )
    steps = RunStep.objects.filter(kind=StepKind.MODEL, started_at__gte=since).aggregate(
        total=Count("pk"),
        cached=Count("pk", filter=Q(output__cached=True)),
        fallbacks=Count("pk", filter=Q(output__fallbacks__0__isnull=False)),
    )
    spend_agents = list(
        runs.values(name=Coalesce(F("agent__name"), Value("MCP clients' tool calls")))
        # django-stubs mistakes this annotation for a redefinition of the model's own `tokens`.
        .annotate(cost=Sum("cost"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))  # type: ignore[no-redef]
        .order_by("-cost", "name")[:8]
    )
    # A run counts for each team its actor is in (the role groups are not teams).
    in_window = Q(user__runs__created_at__gte=since)
    spend_teams = list(
        Group.objects.exclude(name__in=roles.ROLE_GROUPS)
        .annotate(
            cost=Sum("user__runs__cost", filter=in_window),
            tokens=Sum(
                F("user__runs__prompt_tokens") + F("user__runs__completion_tokens"),
                filter=in_window,
            ),
        )
        .filter(cost__isnull=False)
        .values("name", "cost", "tokens")
        .order_by("-cost", "name")[:8]
    )
    totals = runs.aggregate(
        runs=Count("pk"), failures=Count("pk", filter=Q(state__in=FAILED)), cost=Sum("cost")
    )
    return {
        "days": days,
        "runs": totals["runs"],
        "failures": totals["failures"],
        "cost": totals["cost"] or Decimal(0),
        "runs_chart": runs_chart(series),
        "runs_series": series,  # the charts' figures, as tables, for those who cannot see them
        "spend_agents": spend_agents,
        "spend_teams": spend_teams,
        "pending_approvals": sum(ages.values()),
        "approval_ages": ages,
        "oldest_approval": oldest,
        "pending_answers": Escalation.objects.filter(status="pending").count(),
        "model_steps": steps["total"],
        "cache_hits": steps["cached"],
        "cache_rate": round(100 * steps["cached"] / steps["total"]) if steps["total"] else None,
        "fallbacks": steps["fallbacks"],
        "spend_agents_chart": spend_chart(spend_agents),
        "spend_teams_chart": spend_chart(spend_teams),
    }


def runs_chart(series: list[tuple], *, width: int = 560, height: int = 140) -> SafeString:
    """Runs per day as bars, their failures as the red part of each bar."""
    top = max([runs for _, runs, _ in series] + [1])
    slot = width / len(series)
    bars = []
    for i, (day, runs, failures) in enumerate(series):
        x = i * slot + 2
        h = (height - 20) * runs / top
        hf = (height - 20) * failures / top
        label = f"{day:%b %d}: {runs} runs, {failures} failed"
        numbers = (x, height - 16 - h, slot - 4, h, height - 16 - hf, hf)
        bars.append((label, *(f"{n:.1f}" for n in numbers)))
    # format_html escapes its arguments into strings: numbers are formatted before.
    body = format_html_join(
        "",
        '<g><title>{0}</title><rect class="ok" x="{1}" y="{2}" width="{3}" height="{4}"/>'
        '<rect class="failed" x="{1}" y="{5}" width="{3}" height="{6}"/></g>',
        bars,
    )
    first, last = series[0][0], series[-1][0]
    return format_html(
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="Runs per day, '
        'failures in red">{body}<text x="0" y="{h}">{first}</text>'
        '<text x="{w}" y="{h}" text-anchor="end">{last}</text></svg>',
        w=width,
        h=height,
        body=body,
        first=f"{first:%b %d}",
        last=f"{last:%b %d}",
    )


def spend_chart(rows: list[dict], *, width: int = 560) -> SafeString:
    """Spend as horizontal bars, largest first, with the figure at the end of each."""
    if not rows:
        return format_html('<p class="help">{}</p>', "No runs in the window.")
    top = max([row["cost"] or 0 for row in rows] + [Decimal("0.000001")])
    line = 22
    body = format_html_join(
        "",
        '<g><text x="0" y="{y}">{name}</text><rect class="ok" x="180" y="{ry}" '
        'width="{w}" height="14"/><text x="{tx}" y="{y}">${cost} · {tokens} '
        "tokens</text></g>",
        (
            {
                "y": i * line + 15,
                "ry": i * line + 4,
                "name": (row["name"] or "")[:24],
                "w": f"{200 * float((row['cost'] or 0) / top):.1f}",
                "tx": f"{186 + 200 * float((row['cost'] or 0) / top):.1f}",
                "cost": f"{row['cost'] or 0:.4f}",
                "tokens": row["tokens"] or 0,
            }
            for i, row in enumerate(rows)
        ),
    )
    return format_html(
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="Spend">{body}</svg>',
        w=width,
        h=len(rows) * line + 6,
        body=body,
    )


class WardenAdminSite(admin.AdminSite):
    """Django's admin with Warden's dashboard on its index page."""

    site_header = "Warden administration"
    site_title = "Warden"
    index_title = "Governance"
    index_template = "admin/warden/index.html"

    def index(self, request, extra_context=None):
        context = dict(extra_context or {})
        if request.user.has_perm("agents.view_run"):
            context["dashboard"] = dashboard()
        return super().index(request, context)
