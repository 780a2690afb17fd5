"""/metrics: Prometheus's text format, for a scraper that shows a bearer token
(`WARDEN_METRICS_TOKEN`) or comes from an allowed network (`WARDEN_METRICS_NETWORKS`); with
neither configured it is closed to everyone (403), never open. Behind a proxy
(`WARDEN_BEHIND_PROXY`) the address is the one X-Forwarded-For names, which the client
chooses: there only the token counts.

What each process counted (telemetry.metrics; added up across processes when
`PROMETHEUS_MULTIPROC_DIR` is set, as `manage.py up` does), and what the database and the broker
say at the moment of the scrape: approvals and held answers waiting, the age of the audit
trail's last anchor, the Celery queue's length, each agent's latest drift statistics.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)


class StateCollector:
    """Gauges read at the scrape, from where the state lives (so every web process reports the
    same figure, whichever the scraper reaches)."""

    def collect(self):
        try:
            yield from list(self._database())  # all of it or none
        except Exception as exc:  # the database away: every process's counts still answer
            logger.warning("metrics: no state from the database (%s)", type(exc).__name__)
        depth = GaugeMetricFamily(
            "warden_celery_queue_length", "Tasks waiting in the Celery queue.", labels=["queue"]
        )
        try:
            depth.add_metric(["celery"], _queue_length("celery"))
        except Exception as exc:  # the broker away: the scrape still answers, without this
            logger.warning("metrics: no queue length from the broker (%s)", type(exc).__name__)
        yield depth

    def _database(self):
        from audit.models import AuditAnchor
        from governance.models import ApprovalRequest, Escalation

        waiting = GaugeMetricFamily(
            "warden_reviews_pending",
            "Approval requests and held answers waiting for a reviewer, and the oldest's age.",
            labels=["kind"],
        )
        oldest = GaugeMetricFamily(
            "warden_reviews_oldest_pending_seconds",
            "How long the oldest waiting review has waited (0: none waits).",
            labels=["kind"],
        )
        now = timezone.now()
        for kind, model in (("tool_call", ApprovalRequest), ("answer", Escalation)):
            pending = model.objects.filter(status="pending")
            waiting.add_metric([kind], pending.count())
            first = pending.order_by("created_at").values_list("created_at", flat=True).first()
            oldest.add_metric([kind], (now - first).total_seconds() if first else 0)
        yield waiting
        yield oldest
        anchored = AuditAnchor.objects.order_by("-sequence").values_list("time", flat=True).first()
        age = GaugeMetricFamily(
            "warden_audit_anchor_age_seconds",
            "Seconds since the audit trail's last anchor (absent: none yet).",
        )
        if anchored is not None:
            age.add_metric([], (now - anchored).total_seconds())
        yield age
        yield from _drift()


def _drift():
    """Each agent's latest drift check per signal (agents.drift): its statistic, and whether it
    alerted and nobody has acknowledged it yet (what the WardenAgentDrift rule fires on)."""
    from agents.models import DriftCheck

    value = GaugeMetricFamily(
        "warden_agent_drift",
        "The latest drift statistic of an agent's signal against its reference window.",
        labels=["agent", "signal"],
    )
    alerting = GaugeMetricFamily(
        "warden_agent_drift_alerting",
        "1 while an agent's latest drift check of a signal alerted and is not acknowledged.",
        labels=["agent", "signal"],
    )
    latest = (
        DriftCheck.objects.order_by("agent_id", "signal", "-day")
        .distinct("agent_id", "signal")
        .values_list("agent__slug", "signal", "value", "alert", "acknowledged_at")
    )
    for agent, signal, statistic, alert, acknowledged in latest:
        value.add_metric([agent, signal], statistic)
        alerting.add_metric([agent, signal], 1 if alert and acknowledged is None else 0)
    yield value
    yield alerting


def _queue_length(queue: str) -> int:
    """Messages waiting in `queue`: the length of its list in the broker (Redis), reached as
    Celery reaches it (a socket path, a URL)."""
    from config.celery import app

    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=1)
        return int(connection.default_channel.client.llen(queue))


def registry() -> CollectorRegistry:
    """Every process's counts (one directory of files) and the state, or this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
    else:
        combined = CollectorRegistry()
        combined.register(_Everything())
    combined.register(StateCollector())
    return combined


class _Everything:
    """This process's own registry, as one collector of another registry."""

    def collect(self):
        return REGISTRY.collect()


def allowed(request: HttpRequest) -> int:
    """200 for a scraper with the token or from an allowed network, else 401 (a token would do)
    or 403 (nothing would)."""
    token = settings.WARDEN_METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if (
        token
        and given.startswith("Bearer ")
        and hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode())
    ):
        return 200
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        address = None
    if settings.BEHIND_PROXY:
        address = None  # a forwarded address is the client's to choose
    if address is not None and any(address in net for net in settings.WARDEN_METRICS_NETWORKS):
        return 200
    return 401 if token else 403


def metrics_view(request: HttpRequest) -> HttpResponse:
    status = allowed(request)
    if status != 200:
        response = HttpResponse(
            b'{"type":"about:blank","title":"Unauthorized","status":401,'
            b'"detail":"a bearer token is required"}'
            if status == 401
            else b'{"type":"about:blank","title":"Forbidden","status":403,'
            b'"detail":"metrics are not served to this address"}',
            status=status,
            content_type="application/problem+json",
        )
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
