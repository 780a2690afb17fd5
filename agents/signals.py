"""What agents tells the apps above it, which it never imports (DESIGN.md §2).

`run_state_changed` (sender Run, run_id=..., state=..., and application_id=... where the sender
knows it: the OAuth2 application that started the run, None for the browser, a personal token
or an MCP call) for the states worth telling: final ones and the parked ones. The integrations
app connects its receiver (webhooks) with `on_run_state` in its AppConfig.ready. It is sent by
`run_state_send`, inside the transaction that changes the run's state, so what a receiver
writes (a webhook delivery, say) commits with the change or not at all; a receiver sends
nothing itself but defers that to `transaction.on_commit`. A receiver that fails is logged and
skipped, inside a savepoint of its own: a notification never stops a run from finishing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction
from django.dispatch import Signal

from agents.models import Run

logger = logging.getLogger(__name__)

run_state_changed = Signal()


def on_run_state(receiver: Callable[..., object], *, dispatch_uid: str) -> None:
    """Connect `receiver` to `run_state_changed`, run inside a savepoint of its own: what it
    writes goes, or stays, on its own, and its failure is logged and skipped."""

    def isolated(*, run_id: int, state: str, **kwargs: object) -> None:
        try:
            with transaction.atomic():
                receiver(run_id=run_id, state=state, **kwargs)
        except Exception:  # whatever it was, the run's own change goes on
            logger.exception("run %s: a receiver of its state %s failed", run_id, state)

    run_state_changed.connect(isolated, sender=Run, weak=False, dispatch_uid=dispatch_uid)


def run_state_send(*, run_id: int, state: str, **known: int | None) -> None:
    """`known`: application_id, if the sender has it at hand (a receiver reads it otherwise)."""
    # Receivers connected by on_run_state never raise; send_robust keeps one connected
    # otherwise from stopping the run too.
    run_state_changed.send_robust(sender=Run, run_id=run_id, state=str(state), **known)
