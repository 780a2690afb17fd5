"""Prometheus metrics (prometheus-client), served at /metrics by ops.metrics.

Every process counts its own: daphne, each Celery pool process, the launcher. Under `manage.py
up` they share a directory (`PROMETHEUS_MULTIPROC_DIR`, set before anything imports
prometheus_client) and /metrics adds them up; a deployment that runs its processes itself sets
the variable to one directory per host, emptied before they start.

Labels are bounded: an agent's slug, a tool's name, a route and its deployments' ids are
configuration, a handful of each; never a user, a run or a conversation.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds, from a cached answer (milliseconds) to a run that waited a day for a reviewer.
_LONG = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 4 * 3600, 86400)
_SHORT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RUNS_STARTED = Counter("warden_runs_started", "Runs started (queued).", ["agent"])
RUNS_FINISHED = Counter(
    "warden_runs_finished", "Runs that reached a final state.", ["agent", "status"]
)
RUN_DURATION = Histogram(
    "warden_run_duration_seconds",
    "From a run's start to its final state, reviewers' waits included.",
    ["agent", "status"],
    buckets=_LONG,
)
RUN_QUEUE_WAIT = Histogram(
    "warden_run_queue_wait_seconds",
    "From a run's start to the first attempt at it (a worker, or the web process's fast path).",
    buckets=_SHORT,
)
STEPS = Histogram(
    "warden_run_step_duration_seconds",
    "One committed step of a run, by kind.",
    ["kind"],
    buckets=_SHORT,
)
MODEL_CALLS = Counter(
    "warden_model_calls",
    "Model calls by route and the deployment that answered (outcome: ok, cached, error).",
    ["route", "deployment", "outcome"],
)
MODEL_CALL_DURATION = Histogram(
    "warden_model_call_duration_seconds", "One model call, by route.", ["route"], buckets=_SHORT
)
MODEL_TOKENS = Counter(
    "warden_model_tokens",
    "Tokens by route, deployment and direction (input, output).",
    ["route", "deployment", "direction"],
)
MODEL_COST = Counter(
    "warden_model_cost_usd", "What model calls cost, in US dollars.", ["route", "deployment"]
)
MODEL_FALLBACKS = Counter(
    "warden_model_fallbacks",
    "Calls a preferred deployment did not answer, so a later one did (by the one passed over).",
    ["route", "deployment"],
)
MODEL_COOLDOWNS = Counter(
    "warden_model_cooldowns",
    "Deployments the Router took out of rotation for a while after failures (cooldowns begun).",
    ["route", "deployment"],
)
MODEL_CACHE = Counter(
    "warden_model_cache_lookups", "Response cache lookups (result: hit, miss).", ["result"]
)
ANSWER_CACHE = Counter(
    "warden_answer_cache_hits",
    "Questions answered from the answer cache (tier: exact, similar), no model asked.",
    ["tier"],
)
TOOL_CALLS = Counter(
    "warden_tool_calls",
    "Tool calls by tool and how they ended (succeeded, failed, denied, awaiting_approval, ...).",
    ["tool", "status"],
)
TOOL_CALL_DURATION = Histogram(
    "warden_tool_call_duration_seconds", "One tool call's execution.", ["tool"], buckets=_SHORT
)
APPROVAL_DECISIONS = Histogram(
    "warden_approval_decision_seconds",
    "From an approval request (or a held answer) to its decision, by kind and decision.",
    ["kind", "status"],
    buckets=_LONG,
)
HELD_ANSWERS = Counter(
    "warden_held_answers",
    "Answers held for a reviewer (confidence under the threshold).",
    ["agent"],
)
GUARDRAIL_FINDINGS = Counter(
    "warden_guardrail_findings",
    "Guardrail findings by kind (injection, pii, ...) and where (input, tool_output, ...).",
    ["kind", "on"],
)
BUDGET_REFUSALS = Counter(
    "warden_budget_refusals", "Runs refused for a used-up budget (on: start, step).", ["on"]
)
RATE_LIMIT_REFUSALS = Counter(
    "warden_rate_limit_refusals", "Requests refused by a rate limit, by which.", ["limit"]
)
WEBSOCKETS = Gauge(
    "warden_websocket_connections",
    "Open websocket connections, by consumer.",
    ["consumer"],
    multiprocess_mode="livesum",
)
AUDIT_EVENTS = Counter("warden_audit_events", "Audit events appended, by action.", ["action"])
HTTP_REQUESTS = Counter(
    "warden_http_requests",
    "HTTP requests by the view that answered and the status class (2xx, 4xx, 5xx).",
    ["view", "status"],
)
DRIFT_ALERTS = Counter(
    "warden_drift_alerts",
    "Drift alerts raised (agents.drift): an agent's signal moved past its threshold on a day.",
    ["agent", "signal"],
)
RELEASES_ENDED = Counter(
    "warden_releases_ended",
    "Releases of a candidate version that ended, by agent, how (promoted, rolled_back, stopped) "
    "and why (the guard the judge rolled it back for, evaluation: the judge promoted it, person).",
    ["agent", "state", "cause"],
)
