"""Where agents calls up into the portal without importing it (DESIGN.md §2).

The portal fills `run_state_listeners` in from its AppConfig.ready (webhooks). A listener is
called inside the transaction that changes the run's state, so what it writes (a webhook
delivery, say) commits with the change or not at all; it sends nothing itself but defers that
to `transaction.on_commit`. A listener that fails is logged and skipped, inside a savepoint: a
notification must never stop a run from finishing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction

logger = logging.getLogger(__name__)

# (run id, new state) -> None, for the states worth telling: final ones and the parked ones.
run_state_listeners: list[Callable[[int, str], None]] = []


def run_state_changed(*, run_id: int, state: str) -> None:
    for listener in run_state_listeners:
        try:
            with transaction.atomic():
                listener(run_id, str(state))
        except Exception:  # whatever it was, the run's own change goes on
            logger.exception("run %s: a listener of its state %s failed", run_id, state)
