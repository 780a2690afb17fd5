"""Traces as a platform team's OpenTelemetry backend receives them (over OTLP/HTTP, decoded from
protobuf): a tool-calling run that waited for a reviewer is one trace, under the API caller's
own `traceparent`, from the request through the worker's attempts to the approval and the tool
call, with the GenAI conventions' attributes, and nothing of what was said in it."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import subprocess
import sys
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.models import Agent, Deployment, ModelRoute, Run
from audit.services import SYSTEM
from governance.models import Action, ApprovalRequest
from governance.services import access_grant
from integrations.tests.test_openai import Live
from tests.model_server import Reply
from tests.otlp import OtlpReceiver
from tests.processes import daphne_on_test_database
from tools.models import Tool

QUESTION = "open a ticket: the VPN in Lisbon is down since 0815"
TITLE = "VPN Lisbon down"
ANSWER = "Ticket 4711 is open for the Lisbon VPN."


@pytest.fixture
def receiver():
    otlp = OtlpReceiver()
    yield otlp
    otlp.close()


def test_a_run_that_waited_for_a_reviewer_is_one_trace_with_its_span_tree_and_no_content(
    committing_db, server, unused_tcp_port, receiver, start_worker, people, tmp_path
):
    """... and the web process's /metrics adds up what every process counted."""
    from django.db import connection

    ticket = Tool.objects.get(name="create_ticket")  # risk: write, so a reviewer approves
    ticket.enabled = True
    ticket.save(update_fields=["enabled"])
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/scripted", api_base=server.base("helper")
    )
    agent = Agent.objects.create(name="Helper", slug=f"helper-{uuid.uuid4().hex[:4]}", route=route)
    agent.tools.add(ticket)
    for obj in (agent, route, ticket):
        access_grant(obj=obj, holder=people.integration, action=Action.USE, actor=SYSTEM)
    server.script("helper", Reply.call("create_ticket", {"title": TITLE}), Reply.say(ANSWER))
    # Exported within a fifth of a second of ending, not the SDK's default five.
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "warden-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # Metrics: each process counts in this directory, as under `manage.py up`.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "WARDEN_METRICS_TOKEN": "scrape-me",
    }
    caller_trace = secrets.token_hex(16)
    caller_span = secrets.token_hex(8)

    with daphne_on_test_database(unused_tcp_port, **otel) as url:
        start_worker(**otel)
        live = Live(url, server)
        member = {
            "Authorization": f"Bearer {live.token(people.integration, 'agents:run runs:read')}"
        }
        parked = httpx.post(  # ?wait: answered once the run settles, here parked
            f"{url}/api/v1/agents/{agent.slug}/runs?wait=60",
            json={"input": QUESTION},
            headers={**member, "traceparent": f"00-{caller_trace}-{caller_span}-01"},
            timeout=90,
        )
        assert parked.json()["state"] == "awaiting_approval", parked.text
        run_id = parked.json()["id"]
        reviewer = {"Authorization": f"Bearer {live.token(people.reviewer, 'approvals:write')}"}
        approval = ApprovalRequest.objects.get(run_id=run_id)
        decided = httpx.post(
            f"{url}/api/v1/approvals/{approval.pk}/decide",
            json={"decision": "approve", "comment": ""},
            headers=reviewer,
        )
        assert decided.status_code == 200, decided.text

        def complete(spans) -> bool:
            # Each process exports on its own schedule: the worker's attempts, daphne's requests.
            names = [s.name for s in spans]
            attempts = [n for n in names if n.startswith("invoke_agent ")]
            requests = [
                n for n in names if n.startswith(("POST api/v1/agents", "POST api/v1/appr"))
            ]
            return len(attempts) == 2 and "approval" in names and len(requests) == 2

        spans = receiver.wait_for(complete, what="both requests, both attempts, the approval")
        done = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=member)  # ended with its span
        assert done.json()["state"] == "succeeded", done.text
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"})
    connection.close()

    # What the worker counted (the run, its model calls and tool calls), daphne serves.
    assert scraped.status_code == 200, scraped.text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    slug = agent.slug
    assert samples[("warden_runs_started_total", (("agent", slug),))] == 1
    assert samples[("warden_runs_finished_total", (("agent", slug), ("status", "succeeded")))] == 1
    assert (
        samples[("warden_run_duration_seconds_count", (("agent", slug), ("status", "succeeded")))]
        == 1
    )
    deployment = (("deployment", f"{route.name}#1"),)
    calls = ("warden_model_calls_total", (*deployment, ("outcome", "ok"), ("route", route.name)))
    assert samples[calls] == 2
    tool = ("tool", "create_ticket")
    assert samples[("warden_tool_calls_total", (("status", "awaiting_approval"), tool))] == 1
    assert samples[("warden_tool_calls_total", (("status", "succeeded"), tool))] == 1
    assert (
        samples[
            (
                "warden_approval_decision_seconds_count",
                (("kind", "tool_call"), ("status", "approved")),
            )
        ]
        == 1
    )
    assert samples[("warden_reviews_pending", (("kind", "tool_call"),))] == 0
    assert ("warden_celery_queue_length", (("queue", "celery"),)) in samples
    runs_view = ("warden_http_requests_total", (("status", "2xx"), ("view", "api-run-create")))
    assert samples[runs_view] == 1
    connection.close()

    # The run's trace is the caller's: its traceparent was honoured, and the API says so.
    assert Run.objects.get(pk=run_id).trace_id == caller_trace
    assert done.json()["trace_id"] == caller_trace
    ours = [s for s in spans if s.trace_id == caller_trace]
    by_id = {s.span_id: s for s in ours}
    names = [s.name for s in ours]
    assert {s.service for s in ours} == {"warden-under-test"}

    def children(parent, name=None):
        return [s for s in ours if s.parent_id == parent.span_id and name in (None, s.name)]

    def only(found):
        assert len(found) == 1, [s.name for s in found]
        return found[0]

    request = only([s for s in ours if s.parent_id == caller_span])  # the API request, ours
    assert request.name.startswith("POST"), request.name
    start = only(children(request, "start run"))
    assert start.attributes["warden.agent"] == agent.slug
    decision = only(children(start, "governance.decide"))
    assert decision.attributes["warden.decision.effect"] == "allow"
    # Each attempt at the run, in the worker, is under the start: the first ends parked, the
    # second (after the reviewer) calls the tool and answers.
    first, second = sorted(children(start, f"invoke_agent {agent.slug}"), key=lambda s: s.start)
    assert first.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert first.attributes["warden.run.id"] == run_id
    assert (
        first.attributes["warden.run.steps_before"],
        second.attributes["warden.run.lease_token"],
    ) == (0, 2)
    model = only(children(first, f"chat {route.name}"))
    assert model.attributes["gen_ai.operation.name"] == "chat"
    assert model.attributes["gen_ai.request.model"] == "openai/scripted"
    assert model.attributes["gen_ai.system"] == "openai"
    assert model.attributes["warden.deployment"] == f"{route.name}#1"
    assert model.attributes["gen_ai.usage.input_tokens"] > 0
    asked = only(children(first, "execute_tool create_ticket"))
    assert asked.attributes["warden.tool.status"] == "awaiting_approval"
    assert asked.attributes["warden.ledger.key"] == f"run:{run_id}:step:0:call:0"
    assert (
        only(children(asked, "governance.decide")).attributes["warden.decision.effect"]
        == "require_approval"
    )
    called = only(children(second, "execute_tool create_ticket"))
    assert called.attributes["warden.tool.status"] == "succeeded"
    assert called.attributes["warden.tool.version"]
    waited = only(children(called, "approval"))
    assert waited.attributes["warden.approval.status"] == "approved"
    assert waited.end > waited.start
    assert len(children(second, f"chat {route.name}")) == 1
    # The second attempt was set going by the reviewer's decision, a request of its own
    # trace: linked, not merged.
    decision_request = only([s for s in spans if s.name.startswith("POST api/v1/approvals")])
    assert (decision_request.trace_id,) == tuple({t for t, _ in second.links})
    assert all(s.parent_id in by_id or s is request for s in ours), names
    # Parking for a reviewer is how the first attempt ends as it should: not an error.
    assert (first.status, asked.status, second.status, called.status) == (0, 0, 0, 0)
    # The HTTP spans keep no trace of the caller: address, user agent, query string.
    for span in spans:
        for key in ("net.peer.ip", "client.address", "http.user_agent", "user_agent.original"):
            assert span.attributes.get(key, "") == "", (span.name, key)
        assert not any("wait=60" in str(v) for v in span.attributes.values()), span.name
    # Nothing that was said: not the question, the tool's arguments or the answer.
    sent = b"".join(s.raw for s in spans)
    for text in (QUESTION, "Lisbon", TITLE, ANSWER, "0815"):
        assert text.encode() not in sent, text


@pytest.fixture
def scrape(client, settings):
    def get(*, token=None, networks=(), header=None):
        settings.WARDEN_METRICS_TOKEN = token or ""
        settings.WARDEN_METRICS_NETWORKS = [ipaddress.ip_network(n) for n in networks]
        headers = {"HTTP_AUTHORIZATION": header} if header else {}
        return client.get("/metrics", **headers)

    return get


def test_metrics_are_served_to_nobody_until_a_token_or_a_network_is_configured(db, scrape):
    closed = scrape()
    assert closed.status_code == 403
    assert closed["Content-Type"] == "application/problem+json"
    assert b"warden_" not in closed.content
    assert scrape(header="Bearer anything").status_code == 403


def test_metrics_need_the_token_or_an_allowed_network(db, scrape):
    missing = scrape(token="s3cret-scrape")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"warden_" not in missing.content
    assert scrape(token="s3cret-scrape", header="Bearer s3cret-scrap").status_code == 401
    assert scrape(token="s3cret-scrape", header="Basic s3cret-scrape").status_code == 401
    served = scrape(token="s3cret-scrape", header="Bearer s3cret-scrape")
    assert served.status_code == 200
    assert served["Content-Type"].startswith("text/plain; version=")
    assert served["Cache-Control"].startswith("no-store")
    names = {f.name for f in text_string_to_metric_families(served.content.decode())}
    assert {"warden_runs_started", "warden_reviews_pending", "warden_http_requests"} <= names
    # The test client comes from 127.0.0.1: a network holding it lets it in without a token.
    assert scrape(networks=["127.0.0.0/8"]).status_code == 200
    assert scrape(networks=["10.0.0.0/8", "::1/128"]).status_code == 403


def test_behind_a_proxy_only_the_token_opens_the_metrics(db, scrape, settings):
    # There REMOTE_ADDR is the address X-Forwarded-For named: the client's choice.
    settings.BEHIND_PROXY = True
    assert scrape(networks=["127.0.0.0/8"]).status_code == 403
    assert scrape(token="t0ken-1", networks=["127.0.0.0/8"]).status_code == 401
    assert scrape(token="t0ken-1", header="Bearer t0ken-1").status_code == 200


def test_a_scrape_while_the_database_is_away_still_answers_every_process_s_counts(
    db, scrape, monkeypatch
):
    from django.db import OperationalError

    from governance.models import ApprovalRequest

    def away(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(ApprovalRequest.objects, "filter", away)

    served = scrape(token="s3cret-scrape", header="Bearer s3cret-scrape")

    assert served.status_code == 200
    names = {f.name for f in text_string_to_metric_families(served.content.decode())}
    assert {"warden_runs_started", "warden_celery_queue_length"} <= names
    assert not names & {"warden_reviews_pending", "warden_audit_anchor_age_seconds"}


def test_a_json_log_line_names_its_request_run_user_and_span_and_holds_no_secret(
    db, rf, people, monkeypatch
):
    from opentelemetry.sdk.trace import TracerProvider

    from ops.logs import JsonFormatter
    from telemetry import context, tracing

    lines = []
    handler = logging.Handler()
    handler.setFormatter(JsonFormatter())
    handler.emit = lambda record: lines.append(handler.format(record))
    log = logging.getLogger("warden.test.json")
    log.addHandler(handler)
    request = rf.get("/")
    request.user = people.member  # as DRF sets it once a token authenticates
    request.request_id = "req-42"  # as ops.requestid sets it
    monkeypatch.setattr(tracing, "ENABLED", True)  # a span is current, as with tracing on
    tracer = TracerProvider().get_tracer("test")
    try:
        with (
            context.serving(request),
            context.working_on(run=7),
            tracer.start_as_current_span("work") as span,
        ):
            log.warning("calling https://crm.example/x?api_key=abc123 for jane@example.com")
            try:
                raise ValueError("password=hunter2")
            except ValueError:
                log.exception("it failed")
        log.warning("outside")
    finally:
        log.removeHandler(handler)

    first, failed, outside = (json.loads(line) for line in lines)
    ids = span.get_span_context()
    assert first["level"] == "WARNING"
    assert first["logger"] == "warden.test.json"
    assert first["request_id"] == "req-42"
    assert (first["run_id"], first["user_id"]) == (7, people.member.pk)
    assert (first["trace_id"], first["span_id"]) == (f"{ids.trace_id:032x}", f"{ids.span_id:016x}")
    assert "abc123" not in lines[0]
    assert "jane@example.com" not in lines[0]
    assert "crm.example" in first["message"]  # scrubbed, not dropped
    assert failed["error"]["type"] == "ValueError"
    assert "hunter2" not in lines[1]
    assert "Traceback" in failed["error"]["trace"]
    assert set(outside) == {"time", "level", "logger", "message"}


def test_with_tracing_off_no_tracer_is_set_up_and_spans_cost_nothing():
    # A process of its own: this one's tracing state is the suite's.
    code = (
        "import django, sys; django.setup()\n"
        "from telemetry import tracing\n"
        "from governance.policy import Facts, decide\n"
        "with tracing.span('x') as s: assert s is None\n"
        "assert not tracing.ENABLED\n"
        "from opentelemetry import trace\n"
        "print(type(trace.get_tracer_provider()).__name__, sorted(m for m in sys.modules if"
        " m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter',"
        " 'opentelemetry.instrumentation'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # The API's no-op provider; neither the SDK's tracing, an exporter nor an instrumentation.
    assert done.stdout.strip() == "ProxyTracerProvider []"


def test_tracing_is_asked_for_by_an_otlp_endpoint_unless_switched_off():
    from telemetry.tracing import wanted

    assert not wanted({})
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}
    )


def test_captured_content_is_redacted_even_on_a_route_that_keeps_it_in_house(
    db, server, monkeypatch
):
    """With OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT, a model span carries what was
    said, with personal data as placeholders: the tracing backend is somewhere else it goes."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agents.gateway import gateway_complete
    from telemetry import tracing

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "ENABLED", True)
    monkeypatch.setattr(tracing, "CAPTURE_CONTENT", True)
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/scripted", api_base=server.base("in-house")
    )
    server.script("in-house", Reply.say("I wrote to jane.doe@example.com about the refund."))

    reply = gateway_complete(
        route=route,
        messages=[
            {
                "role": "user",
                "content": "Refund card 4111 1111 1111 1111, mail jane.doe@example.com",
            }
        ],
    )

    assert "jane.doe@example.com" in reply.content  # the caller gets the answer as it is
    (span,) = exported.get_finished_spans()
    said = span.attributes["gen_ai.input.messages"] + span.attributes["gen_ai.output.messages"]
    assert "Refund card" in said
    assert "about the refund." in said
    assert "jane.doe@example.com" not in said
    assert "4111" not in said
    assert "[EMAIL_1]" in said


def test_a_completion_on_the_fast_path_is_one_trace_in_the_openai_client_s_traceparent(
    committing_db, server, unused_tcp_port, receiver, people
):
    """The OpenAI-compatible endpoint's run, advanced on a thread of the web process (no worker
    runs here), is in the same trace as the request that asked for it."""
    from django.db import connection

    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/scripted", api_base=server.base("desk")
    )
    agent = Agent.objects.create(name="Desk", slug=f"desk-{uuid.uuid4().hex[:4]}", route=route)
    for obj in (agent, route):
        access_grant(obj=obj, holder=people.integration, action=Action.USE, actor=SYSTEM)
    server.script("desk", Reply.say(ANSWER))
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}

    with daphne_on_test_database(unused_tcp_port, **otel) as url:
        client = Live(url, server).client(people.integration)
        completion = client.chat.completions.create(
            model=f"agent:{agent.slug}",
            messages=[{"role": "user", "content": QUESTION}],
            extra_headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
        )

        def complete(spans) -> bool:
            names = [s.name for s in spans]
            return f"invoke_agent {agent.slug}" in names and any(
                n.startswith("POST v1/chat/completions") for n in names
            )

        spans = receiver.wait_for(complete, what="the request and the run's attempt")
    connection.close()

    assert completion.choices[0].message.content == ANSWER
    ours = {s.name: s for s in spans if s.trace_id == caller_trace}
    request = next(s for n, s in ours.items() if n.startswith("POST v1/chat/completions"))
    assert request.parent_id == caller_span
    assert ours["start run"].parent_id == request.span_id
    attempt = ours[f"invoke_agent {agent.slug}"]
    assert attempt.parent_id == ours["start run"].span_id
    assert ours[f"chat {route.name}"].parent_id == attempt.span_id
    assert Run.objects.get().trace_id == caller_trace
    assert QUESTION.encode() not in b"".join(s.raw for s in spans)
