"""Telemetry for a platform team's own tools: OpenTelemetry traces (`tracing`), Prometheus
metrics (`metrics`) and what log lines and spans share about the work in hand (`context`).

The lowest layer (DESIGN.md §2): every app may import it, and it imports none of them.
"""


def guardrail_found(guardrail: str, *, where: str, action: str) -> None:
    """A guardrail's finding (never the text): counted, and an event on the current span."""
    from telemetry import metrics, tracing

    metrics.GUARDRAIL_FINDINGS.labels(kind=guardrail, on=where).inc()
    tracing.event(
        "guardrail.finding",
        {"warden.guardrail": guardrail, "warden.guardrail.on": where, "warden.action": action},
    )
