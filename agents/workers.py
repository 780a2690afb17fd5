"""Whether a Celery worker is ready to run what people ask: the chat's "warming up" notice.

Ready means what it means to the launcher and to /readyz (ops.health): a worker answers a ping,
which it does only once it has loaded its models (agents.warm). A worker that holds a live lease
on a run (agents.heartbeat) is there too, busy: one with a solo pool cannot answer a ping while
it works, and it is asked first, as it costs less than a ping. Many open chat pages ask every
few seconds, and with no worker a ping waits its whole timeout: the answer is shared by the
process's requests for WARDEN_READY_CACHE_SECONDS (the readiness probe's cache), and asked by
one request at a time.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger(__name__)

PING_TIMEOUT = 1.0
_lock = threading.Lock()
_cached: tuple[float, bool] | None = None


def workers_ready() -> bool:
    """True if a worker answered a ping within PING_TIMEOUT (recently: see above)."""
    global _cached
    with _lock:
        ttl = settings.READY_CACHE_SECONDS
        if _cached is None or time.monotonic() - _cached[0] >= ttl:
            _cached = (time.monotonic(), _working() or _ping())
        return _cached[1]


def _working() -> bool:
    from agents.models import Run, RunState

    now = timezone.now()
    return Run.objects.filter(state=RunState.RUNNING, lease_expires_at__gt=now).exists()


def _ping() -> bool:
    from config.celery import app

    try:
        return bool(app.control.ping(timeout=PING_TIMEOUT, limit=1))
    except Exception as exc:  # the broker away: no worker can be reached either
        logger.warning("workers: the ping failed: %s", exc)
        return False
