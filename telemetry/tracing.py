"""Traces with OpenTelemetry, exported over OTLP/HTTP to whatever the platform team runs
(Jaeger, Tempo, Honeycomb, Datadog, Langfuse), configured by the standard `OTEL_*` variables.

Off unless an endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or `..._TRACES_ENDPOINT`), and then
free: every helper here returns at its first line, and the SDK is never imported.

One trace per run, wherever it starts: `run_started` opens the run's first span inside whatever
is current (the API request, with the caller's `traceparent`) and gives its context to keep on
the run; each attempt at the run, on a worker or in the web process, is a span under that
context (`run_attempt`), linked to what set it going (a Celery task sent by an approval, say).

Spans carry no prompt, answer, argument or personal data. With
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (the GenAI conventions' switch) the
model spans carry the messages too, redacted by the caller first (`CAPTURE_CONTENT`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

logger = logging.getLogger(__name__)

ENABLED = False
CAPTURE_CONTENT = False
_tracer: Any = None
_propagator: Any = None

Attributes = Mapping[str, str | int | float | bool | list[str]]


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure() -> None:
    """Set up the SDK, its OTLP exporter and the Django and Celery instrumentations, if the
    environment asks for traces (once per process; a forked pool process keeps the parent's,
    and the SDK restarts its export thread after a fork)."""
    global ENABLED, CAPTURE_CONTENT, _tracer, _propagator
    if ENABLED or not wanted():
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name.
    resource = Resource.create({"service.name": "warden"}).merge(OTELResourceDetector().detect())
    if name := os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource.create({"service.name": name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("warden")
    _propagator = TraceContextTextMapPropagator()
    CAPTURE_CONTENT = (
        os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").lower() == "true"
    )
    # Probes and scrapes are not requests anybody wants a trace of.
    excluded = os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "healthz,readyz,metrics")
    DjangoInstrumentor().instrument(excluded_urls=excluded, request_hook=_impersonal)
    CeleryInstrumentor().instrument()
    _flush_on_worker_exit()
    ENABLED = True
    logger.info("tracing: spans go to %s", _endpoint())


# What the HTTP instrumentation records of a request that says who or where the caller is, or
# what they asked for in a query string (an SSO callback's code, a search): not kept.
_PERSONAL = (
    "client.address",
    "client.port",
    "net.peer.ip",
    "net.peer.port",
    "http.client_ip",
    "user_agent.original",
    "http.user_agent",
)
_URLS = ("http.url", "url.full", "http.target")


def _impersonal(span: Any, request: Any) -> None:
    """The request's span without the caller's address, user agent or query string."""
    attributes = getattr(span, "attributes", None) or {}
    for key in _PERSONAL:
        if key in attributes:
            span.set_attribute(key, "")
    for key in _URLS:
        if isinstance(attributes.get(key), str) and "?" in attributes[key]:
            span.set_attribute(key, attributes[key].split("?", 1)[0])
    if "url.query" in attributes:
        span.set_attribute("url.query", "")


def _flush_on_worker_exit() -> None:
    """A Celery pool process ends with os._exit, past the SDK's atexit: its spans go first."""
    from celery.signals import worker_process_shutdown, worker_shutdown

    for signal in (worker_process_shutdown, worker_shutdown):
        signal.connect(lambda **_: flush(), weak=False)


def _endpoint() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/") + "/v1/traces"
    )


def flush(timeout_ms: int = 5000) -> None:
    """Send what is buffered now (a process about to exit, or a test about to look)."""
    if ENABLED:
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush(timeout_ms)  # type: ignore[attr-defined]


@contextlib.contextmanager
def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    expected: tuple[type[BaseException], ...] = (),
) -> Iterator[Any]:
    """A span under the current one, for the block (None when tracing is off). An exception
    that leaves the block marks the span failed, naming its type only (messages may hold
    data), unless it is one of the `expected` (the way the work ends normally: a run parked)."""
    if not ENABLED:
        yield None
        return
    with _current(name, attributes, expected=expected) as current:
        yield current


@contextlib.contextmanager
def _current(
    name: str,
    attributes: Attributes | None,
    links: list | None = None,
    expected: tuple[type[BaseException], ...] = (),
):
    with _tracer.start_as_current_span(
        name,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except expected:
            raise
        except BaseException as exc:
            _failed(current, exc)
            raise


@contextlib.contextmanager
def run_started(name: str, attributes: Attributes | None = None) -> Iterator[str]:
    """The run's first span, under the current one (a request's, with its caller's
    `traceparent`). Yields the `traceparent` to keep with the run ("" when tracing is off)."""
    if not ENABLED:
        yield ""
        return
    with span(name, attributes) as current:
        yield _traceparent_of(current)


@contextlib.contextmanager
def run_attempt(
    traceparent: str,
    name: str,
    attributes: Attributes | None = None,
    *,
    expected: tuple[type[BaseException], ...] = (),
):
    """One attempt at a run: a span under the run's kept context, so every attempt lands in the
    run's trace whichever process makes it; linked to the span current here (the Celery task
    that an approval, a resume job or a retry sent) when that is another trace's."""
    if not ENABLED:
        yield None
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    here = trace.get_current_span().get_span_context()
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    links = []
    if here.is_valid and (
        parent is None
        or trace.get_current_span(parent).get_span_context().trace_id != here.trace_id
    ):
        links.append(trace.Link(here))
    token = otel_context.attach(parent) if parent is not None else None
    try:
        with _current(name, attributes, links, expected) as current:
            yield current
    finally:
        if token is not None:
            otel_context.detach(token)


def finished_span(
    name: str, *, start: datetime, end: datetime, attributes: Attributes | None = None
) -> None:
    """A span of something that already happened (a wait for a reviewer, hours long), under the
    current span, with the times it really had."""
    if not ENABLED:
        return
    done = _tracer.start_span(name, attributes=attributes, start_time=_ns(start))
    done.end(end_time=_ns(end))


def event(name: str, attributes: Attributes | None = None) -> None:
    """An event on the current span (a guardrail finding, a fallback)."""
    if not ENABLED:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(name, attributes=attributes)


def annotate(current: Any, attributes: Attributes) -> None:
    """Attributes known only once the work is done (tokens, the deployment that answered)."""
    if current is not None:
        current.set_attributes(attributes)


def failed(current: Any, reason: str) -> None:
    """The span's work failed without an exception leaving it (a refusal, a failed tool)."""
    if current is not None:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, reason))


def trace_id(traceparent: str) -> str:
    """The trace id (32 hex digits) of a kept `traceparent`, or ""."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def current_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span, in hex, or ("", "") (for log lines)."""
    if not ENABLED:
        return "", ""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _traceparent_of(current: Any) -> str:
    context = current.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _failed(current: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    current.set_attribute("error.type", type(exc).__qualname__)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)
