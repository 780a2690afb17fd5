"""The admin console's dashboard: what the governance team checks first, in figures and small
server-rendered SVG charts (no script, nothing fetched from elsewhere).

Each figure is one aggregate query over the window (14 days by default).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import (
    Case,
    Count,
    DateField,
    F,
    FloatField,
    Func,
    JSONField,
    Min,
    Q,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Left, Trunc, TruncDate
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from agents.models import DriftCheck, Run, RunState, RunStep, StepKind, StepStatus
from agents.releases import Percentile
from audit.models import AuditEvent
from audit.selectors import audit_recent_for, may_view_audit
from governance import roles
from governance.models import ApprovalRequest, ApprovalStatus, Escalation
from portal import drift
from portal.charts import line_chart, stacked_chart

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
        "drift_alerts": DriftCheck.objects.filter(alert=True, acknowledged_at__isnull=True).count(),
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


# The console's dashboard page (/admin/dashboard/): a date range, and over it usage and spend
# per team and per person, approval waiting times, guardrail findings, fallbacks and errors.
# Every figure comes from an aggregate query over the range: the page costs the same number of
# queries however many runs, people or events there are.

PRESETS = (7, 30, 90)
DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP = 6  # series drawn per chart; the rest are summed into "Others"


class RangeForm(forms.Form):
    """The dashboard's range: a preset number of days ending today, or two dates."""

    days = forms.TypedChoiceField(
        label="Last",
        choices=[(d, f"{d} days") for d in PRESETS],
        coerce=int,
        required=False,
    )
    since = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self):
        data = super().clean()
        today = timezone.localdate()
        since, until = data.get("since"), data.get("until")
        if self.errors:
            return data
        if since is None and until is None:
            days = data.get("days") or DEFAULT_DAYS
            data["range"] = (today - timedelta(days=days - 1), today)
            return data
        until = until or today
        since = since or until - timedelta(days=DEFAULT_DAYS - 1)
        if since > until:
            raise forms.ValidationError(
                f"The range starts ({since:%Y-%m-%d}) after it ends ({until:%Y-%m-%d}): "
                "the start date must come first."
            )
        if since > today:
            raise forms.ValidationError(f"The range starts in the future ({since:%Y-%m-%d}).")
        if (until - since).days + 1 > MAX_DAYS:
            raise forms.ValidationError(f"A range is at most {MAX_DAYS} days long.")
        data["range"] = (since, until)
        return data


def dashboard_range(params) -> tuple[RangeForm, date, date, int | None]:
    """The form bound to the query string, the range to show and the preset it is, if any:
    the form's range, or the last DEFAULT_DAYS days when it has errors (shown above the
    charts)."""
    form = RangeForm(params)
    today = timezone.localdate()
    if not form.is_bound:
        return form, today - timedelta(days=DEFAULT_DAYS - 1), today, DEFAULT_DAYS
    if not form.is_valid():
        return form, today - timedelta(days=DEFAULT_DAYS - 1), today, None
    since, until = form.cleaned_data["range"]
    dated = form.cleaned_data.get("since") or form.cleaned_data.get("until")
    return form, since, until, None if dated else (form.cleaned_data.get("days") or DEFAULT_DAYS)


class Epoch(Func):
    """A duration in seconds."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)"
    output_field = FloatField()


def _buckets(since: date, until: date) -> tuple[str, list[date]]:
    """Days for a range of up to a month, else weeks (starting on Mondays)."""
    if (until - since).days < 31:
        return "day", [since + timedelta(days=i) for i in range((until - since).days + 1)]
    first = since - timedelta(days=since.weekday())
    return "week", [first + timedelta(weeks=i) for i in range((until - first).days // 7 + 1)]


def _at_midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def _series(rows, key: str, buckets: list[date], value: str, top: list) -> list:
    """[(name, [value per bucket])] for the names in `top`, then "Others" for the rest."""
    index = {b: i for i, b in enumerate(buckets)}
    series = {name: [0.0] * len(buckets) for name in top}
    others = [0.0] * len(buckets)
    for row in rows:
        values = series.get(row[key], others)
        values[index[row["bucket"]]] += float(row[value] or 0)
    named = [(str(name), values) for name, values in series.items()]
    return named + ([("Others", others)] if any(others) else [])


def console_dashboard(*, since: date, until: date) -> dict:
    kind, buckets = _buckets(since, until)
    start, end = _at_midnight(since), _at_midnight(until + timedelta(days=1))

    def bucket(field: str) -> Trunc:
        return Trunc(field, kind, output_field=DateField())

    used = F("prompt_tokens") + F("completion_tokens")
    runs = Run.objects.filter(created_at__gte=start, created_at__lt=end)
    per_bucket = {
        row["bucket"]: row
        for row in runs.values(bucket=bucket("created_at")).annotate(
            runs=Count("pk"),
            failed=Count("pk", filter=Q(state=RunState.FAILED)),
            refused=Count("pk", filter=Q(state=RunState.REJECTED)),
            # django-stubs mistakes this annotation for a redefinition of the model's `tokens`.
            tokens=Sum(used),  # type: ignore[no-redef]
            cost=Sum("cost"),
        )
    }

    def column(name: str) -> list:
        return [per_bucket.get(b, {}).get(name) or 0 for b in buckets]

    # Teams: a run counts for each team its actor is in (role groups are not teams).
    team_rows = list(
        Group.objects.exclude(name__in=roles.ROLE_GROUPS)
        .filter(user__runs__created_at__gte=start, user__runs__created_at__lt=end)
        .values("name", bucket=bucket("user__runs__created_at"))
        .annotate(
            runs=Count("user__runs"),
            tokens=Sum(F("user__runs__prompt_tokens") + F("user__runs__completion_tokens")),
            cost=Sum("user__runs__cost"),
        )
    )
    teams = _totals(team_rows, "name")
    top_users = list(
        runs.values("actor_id", name=F("actor__username"))
        .annotate(runs=Count("pk"), tokens=Sum(used), cost=Sum("cost"))  # type: ignore[no-redef]
        .order_by("-cost", "-runs", "name")[:TOP]
    )
    # The others' runs are summed in the database too: one row per bucket, not per person.
    top_ids = [u["actor_id"] for u in top_users]
    who = Case(When(actor_id__in=top_ids, then=F("actor__username")), default=Value(None))
    user_rows = list(runs.values(who=who, bucket=bucket("created_at")).annotate(cost=Sum("cost")))
    users_rest = runs.exclude(actor_id__in=top_ids).aggregate(
        people=Count("actor_id", distinct=True),
        runs=Count("pk"),
        tokens=Sum(used),
        cost=Sum("cost"),
    )

    decided = ApprovalRequest.objects.filter(
        decided_at__gte=start,
        decided_at__lt=end,
        status__in=[ApprovalStatus.APPROVED, ApprovalStatus.REJECTED],
        decided_by__isnull=False,
    ).annotate(wait=Epoch(F("decided_at") - F("created_at")))
    waits = {
        "decided": Count("pk"),
        "median": Percentile("wait", fraction=0.5),
        "p90": Percentile("wait", fraction=0.9),
    }
    wait_rows = {
        row["bucket"]: row for row in decided.values(bucket=bucket("decided_at")).annotate(**waits)
    }
    wait_totals = decided.aggregate(**waits)
    # Pending at the end of each bucket: asked before it, and still pending or decided after.
    ends = [min(_at_midnight(b + timedelta(days=1 if kind == "day" else 7)), end) for b in buckets]
    pending = ApprovalRequest.objects.filter(created_at__lt=end).aggregate(
        now=Count("pk", filter=Q(status=ApprovalStatus.PENDING)),
        **{
            f"at{i}": Count(
                "pk",
                filter=Q(created_at__lt=moment)
                & (Q(status=ApprovalStatus.PENDING) | Q(decided_at__gte=moment)),
            )
            for i, moment in enumerate(ends)
        },
    )

    events = AuditEvent.objects.filter(
        time__gte=start,
        time__lt=end,
        action__in=["policy.decided", "guardrail.found", "run.step.model"],
    ).annotate(facts=Cast("data", JSONField()))
    found = Q(action="guardrail.found")
    guard_rows = {
        row["bucket"]: row
        for row in events.values(bucket=bucket("time")).annotate(
            injection=Count(
                "pk",
                filter=Q(
                    action="policy.decided", facts__verdicts__contains=[{"guardrail": "injection"}]
                ),
            ),
            withheld=Count(
                "pk", filter=found & Q(facts__guardrail="injection", facts__action="block")
            ),
            let_through=Count(
                "pk", filter=found & Q(facts__guardrail="injection", facts__action="flag")
            ),
            pii=Count("pk", filter=Q(action="run.step.model", facts__has_key="redacted")),
            exfiltration=Count("pk", filter=found & Q(facts__on="answer")),
        )
    }
    steps = RunStep.objects.filter(started_at__gte=start, started_at__lt=end)
    model = Q(kind=StepKind.MODEL)
    fallback = model & Q(output__fallbacks__0__isnull=False)
    step_rows = {
        row["bucket"]: row
        for row in steps.filter(kind__in=[StepKind.MODEL, StepKind.TOOL])
        .values(bucket=bucket("started_at"))
        .annotate(
            model_calls=Count("pk", filter=model),
            fallbacks=Count("pk", filter=fallback),
            tool_errors=Count("pk", filter=Q(kind=StepKind.TOOL, status=StepStatus.ERROR)),
        )
    }
    deployments = list(
        steps.filter(model)
        .values("deployment")
        .annotate(
            calls=Count("pk"),
            fallbacks=Count("pk", filter=fallback),
            cached=Count("pk", filter=Q(output__cached=True)),
        )
        .order_by("-calls", "deployment")[:8]
    )
    # The gateway records each deployment it passed over (failed, or cooling down after
    # failing) as a route.fallback event naming it.
    skipped = dict(
        AuditEvent.objects.filter(time__gte=start, time__lt=end, action="route.fallback")
        .annotate(name=KeyTextTransform("skipped", Cast("data", JSONField())))
        .values_list("name")
        .annotate(n=Count("pk"))
        .order_by("-n", "name")[:8]
    )
    served = {row["deployment"] for row in deployments}
    for row in deployments:
        row["skipped"] = skipped.get(row["deployment"], 0)
    deployments += [
        {"deployment": name, "calls": 0, "fallbacks": 0, "cached": 0, "skipped": n}
        for name, n in skipped.items()
        if name not in served
    ]
    errors = list(
        runs.filter(state=RunState.FAILED)
        .exclude(error="")
        .values(message=Left("error", 160))
        .annotate(runs=Count("pk"))
        .order_by("-runs", "message")[:5]
    )

    def of(rows: dict, name: str) -> list:
        return [rows.get(b, {}).get(name) or 0 for b in buckets]

    def hours(value: float | None) -> float | None:
        return None if value is None else round(value / 3600, 2)

    team_series = _series(team_rows, "name", buckets, "cost", [t["name"] for t in teams[:TOP]])
    user_series = _series(user_rows, "who", buckets, "cost", [u["name"] for u in top_users])
    median = [hours(wait_rows.get(b, {}).get("median")) for b in buckets]
    p90 = [hours(wait_rows.get(b, {}).get("p90")) for b in buckets]
    guards = [
        ("Injection in a message", of(guard_rows, "injection")),
        ("Source withheld from the model", of(guard_rows, "withheld")),
        ("Security document let through", of(guard_rows, "let_through")),
        ("Personal data redacted", of(guard_rows, "pii")),
        ("Link carrying data in an answer", of(guard_rows, "exfiltration")),
    ]
    faults = [
        ("Served after a fallback", of(step_rows, "fallbacks")),
        ("Tool call failed", of(step_rows, "tool_errors")),
        ("Run failed", column("failed")),
    ]
    return {
        "since": since,
        "until": until,
        "bucket": kind,
        "buckets": buckets,
        "totals": {
            "runs": sum(column("runs")),
            "failed": sum(column("failed")),
            "refused": sum(column("refused")),
            "tokens": sum(column("tokens")),
            "cost": sum(column("cost"), Decimal(0)),
        },
        "usage": {
            "rows": list(
                zip(buckets, column("runs"), column("tokens"), column("cost"), strict=True)
            ),
            "chart": stacked_chart(buckets, [("Runs", column("runs"))], label=f"Runs per {kind}"),
        },
        "teams": {
            "totals": teams,
            "series": team_series,
            "rows": _matrix(buckets, team_series),
            "chart": stacked_chart(
                buckets, team_series, label=f"Spend per team per {kind}", unit="$"
            ),
        },
        "users": {
            "totals": top_users,
            "rest": users_rest if users_rest["runs"] else None,
            "series": user_series,
            "rows": _matrix(buckets, user_series),
            "chart": stacked_chart(
                buckets, user_series, label=f"Spend per person per {kind}", unit="$"
            ),
        },
        "approvals": {
            "decided": wait_totals["decided"],
            "median": hours(wait_totals["median"]),
            "p90": hours(wait_totals["p90"]),
            "pending": pending["now"],
            "rows": list(
                zip(
                    buckets,
                    of(wait_rows, "decided"),
                    median,
                    p90,
                    [pending[f"at{i}"] for i in range(len(buckets))],
                    strict=True,
                )
            ),
            "series": [("Median wait", median), ("90th percentile", p90)],
            "chart": line_chart(
                buckets,
                [("Median wait", median), ("90th percentile", p90)],
                label=f"Approval waiting time per {kind}, in hours",
                unit="h",
            ),
        },
        "guardrails": {
            "series": guards,
            "totals": [(name, sum(values)) for name, values in guards],
            "rows": _matrix(buckets, guards),
            "chart": stacked_chart(buckets, guards, label=f"Guardrail findings per {kind}"),
        },
        "faults": {
            "series": faults,
            "totals": [(name, sum(values)) for name, values in faults],
            "model_calls": sum(of(step_rows, "model_calls")),
            "rows": _matrix(buckets, faults),
            "deployments": deployments,
            "errors": errors,
            "chart": stacked_chart(buckets, faults, label=f"Fallbacks and errors per {kind}"),
        },
    }


def _totals(rows: list[dict], key: str) -> list[dict]:
    """Rows per (name, bucket) summed per name, the costliest first."""
    totals: dict[str, dict] = {}
    for row in rows:
        total = totals.setdefault(
            row[key], {"name": row[key], "runs": 0, "tokens": 0, "cost": Decimal(0)}
        )
        total["runs"] += row["runs"] or 0
        total["tokens"] += row["tokens"] or 0
        total["cost"] += row["cost"] or 0
    return sorted(totals.values(), key=lambda t: (-t["cost"], -t["runs"], t["name"]))


def _matrix(buckets: list[date], series: list) -> list[tuple[date, list, float]]:
    """The table under a chart: per bucket, each series' value and their sum."""
    return [
        (b, [values[i] for _, values in series], sum(values[i] for _, values in series))
        for i, b in enumerate(buckets)
    ]


def _oauth_internals() -> set[type]:
    """django-oauth-toolkit's records that only its flows write: authorization codes, ID
    tokens and refresh tokens. They stay registered (revoking a refresh token, reading who
    holds one) but leave the main index and the side navigation for a collapsed section."""
    from oauth2_provider.models import get_grant_model, get_id_token_model, get_refresh_token_model

    return {get_grant_model(), get_id_token_model(), get_refresh_token_model()}


class WardenAdminSite(admin.AdminSite):
    """Django's admin with Warden's dashboard on its index page and at /admin/dashboard/, the
    audit trail's latest events in the index's side panel, and OAuth's internals set aside."""

    site_header = "Warden administration"
    site_title = "Warden"
    index_title = "Governance"
    index_template = "admin/warden/index.html"

    def get_urls(self):
        return [
            path("dashboard/", self.admin_view(self.dashboard_view), name="dashboard"),
            path("dashboard/drift/", self.admin_view(self.drift_view), name="drift"),
            path(
                "dashboard/drift/<int:agent_id>/",
                self.admin_view(self.drift_agent_view),
                name="drift_agent",
            ),
            path(
                "dashboard/drift/<int:agent_id>/reference/",
                self.admin_view(self.drift_reference_view),
                name="drift_reference",
            ),
            path(
                "dashboard/drift/alerts/<int:check_id>/acknowledge/",
                self.admin_view(self.drift_acknowledge_view),
                name="drift_acknowledge",
            ),
            *super().get_urls(),
        ]

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        if app_label is not None:  # an app's own index lists all of its models
            return apps
        internals = _oauth_internals()
        for app in apps:
            app["models"] = [m for m in app["models"] if m["model"] not in internals]
        return [app for app in apps if app["models"]]

    def oauth_internals(self, request) -> list[dict]:
        """The internals the user may see, as the index's app list has its models."""
        internals = _oauth_internals()
        return [
            model
            for app in super().get_app_list(request)
            for model in app["models"]
            if model["model"] in internals
        ]

    def index(self, request, extra_context=None):
        context = dict(extra_context or {})
        if request.user.has_perm("agents.view_run"):
            context["dashboard"] = dashboard()
        context["oauth_internals"] = self.oauth_internals(request)
        context["recent_events"], context["recent_everyone"] = audit_recent_for(request.user)
        context["may_view_audit"] = may_view_audit(request.user)
        return super().index(request, context)

    def drift_view(self, request):
        return drift.drift_view(self, request)

    def drift_agent_view(self, request, agent_id: int):
        return drift.drift_agent_view(self, request, agent_id)

    def drift_reference_view(self, request, agent_id: int):
        return drift.drift_reference_view(self, request, agent_id)

    def drift_acknowledge_view(self, request, check_id: int):
        return drift.drift_acknowledge_view(self, request, check_id)

    def dashboard_view(self, request):
        if not request.user.has_perm("agents.view_run"):
            raise PermissionDenied
        form, since, until, preset = dashboard_range(request.GET or None)
        context = {
            **self.each_context(request),
            "title": "Dashboard",
            "form": form,
            "presets": PRESETS,
            "preset": preset,
            "board": console_dashboard(since=since, until=until),
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/warden/dashboard.html", context)
