"""Lease heartbeats: a worker renews the lease of each run it advances while any step runs
(a tool call, a model call, a retrieval), so a lease can be short and a dead worker's runs
resume in seconds, whatever a live one is waiting for (DESIGN.md §4; Temporal's heartbeat
timeout is the model).

One daemon thread per process renews every lease it holds each WARDEN_RUN_HEARTBEAT_SECONDS
(a third of WARDEN_RUN_LEASE_SECONDS unless set), with a fenced UPDATE on its own database
connection. An UPDATE that matches no row means another worker holds the run now: the lease is
marked lost, and the orchestrator stops at its next step without writing. A heartbeat that
fails (the database is away) is retried at the next beat; if the lease lapses meanwhile, that
is right: a worker that cannot reach the database should not keep a run from the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from agents.models import RunState

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Lease:
    """A run's lease as held by this worker; `lost` is set once somebody else holds it."""

    run_id: int
    token: int
    lost: threading.Event = field(default_factory=threading.Event)
    due: float = 0.0  # time.monotonic() of the next beat


_BEAT = f"""
UPDATE agents_run SET lease_expires_at = %s
WHERE id = %s AND fencing_token = %s AND state = '{RunState.RUNNING}'
"""  # noqa: S608 - constants only


class _Heart:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.leases: set[Lease] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="lease-heartbeat", daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while True:
            with self.lock:
                leases = list(self.leases)
            now = time.monotonic()
            for lease in leases:
                if lease.due <= now and not lease.lost.is_set():
                    self.beat(lease)
            with self.lock:
                idle = not self.leases
                upcoming = min((lease.due for lease in self.leases), default=None)
            if idle:
                connection.close()  # this thread's own; opened again by the next beat
            wait = None if upcoming is None else max(0.0, upcoming - time.monotonic())
            self.wake.wait(wait)
            self.wake.clear()

    def beat(self, lease: Lease) -> None:
        lease.due = time.monotonic() + interval()
        expires = timezone.now() + timedelta(seconds=settings.WARDEN_RUN_LEASE_SECONDS)
        try:
            with connection.cursor() as cursor:
                cursor.execute(_BEAT, [expires, lease.run_id, lease.token])
                matched = cursor.rowcount
        except Exception:
            # Retried at the next beat, on a new connection; the lease may lapse meanwhile.
            logger.warning("run %s: lease heartbeat failed", lease.run_id, exc_info=True)
            connection.close()
            return
        if not matched and lease in self.leases:
            logger.info(
                "run %s: lease token %s no longer current (heartbeat)", lease.run_id, lease.token
            )
            lease.lost.set()


_heart: _Heart | None = None
_heart_lock = threading.Lock()


def interval() -> float:
    return settings.WARDEN_RUN_HEARTBEAT_SECONDS


def _the_heart() -> _Heart:
    global _heart
    with _heart_lock:
        if _heart is None or _heart.pid != os.getpid():  # a forked child starts its own
            _heart = _Heart()
        return _heart


@contextlib.contextmanager
def lease_heartbeat(*, run_id: int, token: int, beat: bool = True):
    """Renew the run's lease in the background while the block runs; yields the Lease.
    `beat=False` holds it without renewing (a run advanced inside a caller's transaction, as
    tests do: no other connection can see that run, so nobody else could renew or take it)."""
    lease = Lease(run_id, token, due=time.monotonic() + interval())
    if not beat:
        yield lease
        return
    heart = _the_heart()
    with heart.lock:
        heart.leases.add(lease)
    heart.wake.set()
    try:
        yield lease
    finally:
        with heart.lock:
            heart.leases.discard(lease)
        heart.wake.set()
