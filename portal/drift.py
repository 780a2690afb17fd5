"""The console's drift pages (agents.drift): the open alerts, to acknowledge, and each agent's
latest checks (/admin/dashboard/drift/); per agent, each signal day by day against its
reference over the last DAYS days (/admin/dashboard/drift/<agent id>/)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from agents.drift import (
    BINS,
    REFUSED,
    SIGNALS,
    Measure,
    NotAnAlert,
    Window,
    drift_acknowledge,
    drift_open_alerts,
    drift_reference_pin,
    drift_reference_unpin,
    drift_series,
)
from agents.models import Agent, DriftCheck, DriftReference, DriftSignal
from portal.charts import line_chart, stacked_chart

DAYS = 30
TOOLS = 6  # tools drawn in the mix chart; the rest are "Others"
ACKNOWLEDGE = "agents.acknowledge_driftcheck"
PIN = "agents.change_driftreference"


def _may_view(request: HttpRequest) -> None:
    if not request.user.has_perm("agents.view_run"):
        raise PermissionDenied


def drift_view(site, request: HttpRequest) -> HttpResponse:
    _may_view(request)
    latest = (
        DriftCheck.objects.order_by("agent_id", "signal", "-day")
        .distinct("agent_id", "signal")
        .select_related("agent")
    )
    per_agent: dict[Agent, dict[str, DriftCheck]] = {}
    for check in latest:
        per_agent.setdefault(check.agent, {})[check.signal] = check
    context = {
        **site.each_context(request),
        "title": "Drift",
        "alerts": drift_open_alerts(),
        "may_acknowledge": request.user.has_perm(ACKNOWLEDGE),
        "signals": [DriftSignal(s) for s in SIGNALS],
        "agents": [
            (agent, [checks.get(s) for s in SIGNALS])
            for agent, checks in sorted(per_agent.items(), key=lambda kv: kv[0].name)
        ],
    }
    request.current_app = site.name
    return TemplateResponse(request, "admin/warden/drift.html", context)


def _level(signal: str, counts: Counter) -> float | None:
    """What is charted for a day: the mean (from the bins) or the refusal rate."""
    total = sum(counts.values())
    if not total:
        return None
    if signal == DriftSignal.REFUSALS:
        return round(counts[REFUSED] / total, 3)
    return round(sum((b - 0.5) / BINS * n for b, n in counts.items()) / total, 3)


def _panel(signal: str, measures: list[Measure]) -> dict:
    days = [m.day for m in measures]
    name = DriftSignal(signal).label
    if signal == DriftSignal.TOOL_MIX:
        totals: Counter = Counter()
        for m in measures:
            totals.update(m.today)
        top = [tool for tool, _ in totals.most_common(TOOLS)]
        series: list[tuple[str, list]] = [(t, [m.today[t] for m in measures]) for t in top]
        others = [sum(n for t, n in m.today.items() if t not in top) for m in measures]
        if any(others):
            series.append(("Others", others))
        chart = stacked_chart(days, series, label="Tool calls per day, by tool")
    else:
        day = [_level(signal, m.today) for m in measures]
        before = [_level(signal, m.before) for m in measures]
        what = "share of runs refused" if signal == DriftSignal.REFUSALS else "mean"
        series = [("The day", day), ("Its reference", before)]
        chart = line_chart(days, series, label=f"{name}: the day's {what} and its reference's")
    return {"signal": signal, "name": name, "chart": chart, "series": series, "rows": measures}


def drift_agent_view(site, request: HttpRequest, agent_id: int) -> HttpResponse:
    _may_view(request)
    agent = get_object_or_404(Agent, pk=agent_id)
    today = timezone.localdate()
    window = Window(today - timedelta(days=DAYS), today - timedelta(days=1))
    series = drift_series(agent=agent, window=window)
    context = {
        **site.each_context(request),
        "title": f"Drift of {agent.name}",
        "agent": agent,
        "window": window,
        "panels": [_panel(signal, series[signal]) for signal in SIGNALS],
        "alerts": [a for a in drift_open_alerts() if a.agent_id == agent.pk],
        "pinned": DriftReference.objects.filter(agent=agent).select_related("pinned_by").first(),
        "may_pin": request.user.has_perm(PIN),
        "reference_form": ReferenceForm(),
    }
    request.current_app = site.name
    return TemplateResponse(request, "admin/warden/drift_agent.html", context)


class ReferenceForm(forms.Form):
    since = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To", widget=forms.DateInput(attrs={"type": "date"}))
    reason = forms.CharField(label="Why these days", required=False, max_length=500)


def drift_reference_view(site, request: HttpRequest, agent_id: int) -> HttpResponse:
    """Pin the agent's reference window (or, with `unpin`, go back to the days before)."""
    if not request.user.has_perm(PIN):
        raise PermissionDenied
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    agent = get_object_or_404(Agent, pk=agent_id)
    back = reverse("admin:drift_agent", args=[agent.pk])
    if "unpin" in request.POST:
        if drift_reference_unpin(agent=agent, actor=request.user):
            messages.success(request, f"{agent}: each day is compared with the days before it.")
        return HttpResponseRedirect(back)
    form = ReferenceForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(
            f"{form.fields[name].label}: {' '.join(str(e) for e in errors)}"
            if name in form.fields
            else " ".join(str(e) for e in errors)
            for name, errors in form.errors.items()
        )
        messages.error(request, f"The reference was not pinned. {problems}")
        return HttpResponseRedirect(back)
    data = form.cleaned_data
    try:
        drift_reference_pin(
            agent=agent,
            since=data["since"],
            until=data["until"],
            actor=request.user,
            reason=data["reason"],
        )
    except ValueError as exc:
        messages.error(request, f"The reference was not pinned: {exc}.")
    else:
        messages.success(
            request, f"{agent}: later days are compared with {data['since']}..{data['until']}."
        )
    return HttpResponseRedirect(back)


def drift_acknowledge_view(site, request: HttpRequest, check_id: int) -> HttpResponse:
    if not request.user.has_perm(ACKNOWLEDGE):
        raise PermissionDenied
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    check = DriftCheck.objects.filter(pk=check_id).select_related("agent").first()
    if check is None:
        raise Http404
    try:
        drift_acknowledge(check=check, actor=request.user)
    except NotAnAlert:
        messages.warning(request, f"{check.agent}: that alert was already acknowledged.")
    else:
        messages.success(
            request,
            f"{check.agent}: the {check.get_signal_display().lower()} alert of "
            f"{check.day:%b %d} is acknowledged.",
        )
    back = request.POST.get("next", "")
    if not back.startswith(reverse("admin:drift")):
        back = reverse("admin:drift")
    return HttpResponseRedirect(back)
