"""The Grafana dashboard and the Prometheus alert rules a platform team imports
(ops/observability/): valid for Prometheus's own checker (promtool, from Debian's prometheus
package; CI installs it), and about metrics Warden really exposes, every one of them shown."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from telemetry import metrics

HERE = Path(__file__).resolve().parent.parent / "ops" / "observability"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (apt install prometheus; CI installs it)",
)
# Grafana's variables, as a query would have them on a dashboard.
_VARIABLES = {"$__rate_interval": "5m", "$agent": ".*"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def _dashboard_exprs() -> list[str]:
    board = json.loads((HERE / "dashboard.json").read_text())
    exprs = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in _VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs.append(expr)
    return exprs


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((HERE / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _families() -> dict[str, str]:
    """Every metric family Warden exposes: name -> type."""
    found = {
        m._name: m._type
        for m in vars(metrics).values()
        if hasattr(m, "_name") and hasattr(m, "_type")
    }
    # The state read at the scrape (its queries need no rows to name their families).
    found |= {"warden_reviews_pending": "gauge", "warden_reviews_oldest_pending_seconds": "gauge"}
    found |= {"warden_audit_anchor_age_seconds": "gauge", "warden_celery_queue_length": "gauge"}
    found |= {"warden_agent_drift": "gauge", "warden_agent_drift_alerting": "gauge"}
    return found


def _used(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bwarden_[a-z_]+", expr)}


@needs_promtool
def test_the_alert_rules_pass_promtool():
    checked = subprocess.run(
        [PROMTOOL or "promtool", "check", "rules", str(HERE / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    exprs = _dashboard_exprs()
    # promtool checks PromQL in rule files: each query, as a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [PROMTOOL or "promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_the_dashboard_and_alerts_name_only_metrics_warden_exposes_and_show_them_all():
    families = _families()
    exposed = {name + suffix for name, kind in families.items() for suffix in _SUFFIXES[kind]}
    dashboard, alerts = _used(_dashboard_exprs()), _used(_alert_exprs())
    assert dashboard | alerts <= exposed, sorted((dashboard | alerts) - exposed)
    shown = {name for name in families if any(u.startswith(name) for u in dashboard)}
    assert shown == set(families), sorted(set(families) - shown)


def test_the_dashboard_imports_into_grafana_with_its_own_datasource():
    board = json.loads((HERE / "dashboard.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
