"""What a worker loads at boot, so that the first run waits for nothing.

Connected to Celery's `worker_init` (agents.apps), which fires in the worker's main process
before it forks its pool and before it answers a ping: the pool's processes inherit all of it,
and neither the launcher's banner nor /readyz says "ready" until it is done. Web processes never
load any of it.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


def warm_worker(**kwargs) -> None:
    started = time.monotonic()
    # The offline model's and the knowledge bases' embedder (its weights, ~0.2 s).
    from agents import embedding

    embedding.warm()
    # The injection detector: its weights, the normalisation table and the sentence encoder.
    from governance.guardrails import injection

    injection.scan("Warm-up: is this text an instruction?")
    # litellm and the model gateway (importing litellm costs ~2 s).
    import agents.gateway.client  # noqa: F401

    logger.info(
        "worker warm in %.1f s (embedder, injection detector, model gateway)",
        time.monotonic() - started,
    )
