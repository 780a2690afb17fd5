"""Scenarios the chaos tests share: what a run that survived a fault looks like, runs in
flight across a restart of a data server, and the 150 s tool call (run in a thread, so that
it takes no wall time of its own in the suite)."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.chaos.harness import Endpoint, ModelServer, ReadyzWatch, Warden, wait_for

LONG_CALL_SECONDS = 150
LONG_LEASE_SECONDS = 20


def survived(warden: Warden, endpoint: Endpoint, run_id: int, *, timeout: float = 120) -> dict:
    """Everything a test asserts about one run of the chaos agent after a fault: its row, its
    tool step's key, the endpoint's counts for that key, the ledger and the audit trail."""
    row = warden.wait_final([run_id], timeout=timeout).get(run_id, {})
    keys = warden.step_keys(run_id)
    ledger = warden.ledger(run_id)
    counts = {key: endpoint.counts(key) for key in {*keys, *(r["key"] for r in ledger)}}
    return {
        "row": row,
        "keys": keys,
        "ledger": ledger,
        "counts": counts,  # key -> (requests received, times acted on)
        "duplicates": {
            k: n for k, n in endpoint.duplicate_effects().items() if k.startswith(f"run:{run_id}:")
        },
        "tool_invoked": warden.audit_actions(run_id).count("tool.invoked"),
    }


def assert_one_effect_per_call(seen: dict) -> None:
    """The run succeeded with one tool call, acted on once, one ledger row, one audit event,
    and the ledger counts the attempts the endpoint saw."""
    assert seen["row"].get("state") == "succeeded", seen["row"]
    assert len(seen["keys"]) == 1, seen
    (key,) = seen["keys"]
    received, acted = seen["counts"][key]
    assert acted == 1, seen
    assert seen["duplicates"] == {}
    assert [r["key"] for r in seen["ledger"]] == [key]
    assert seen["ledger"][0]["status"] == "succeeded", seen["ledger"]
    assert seen["tool_invoked"] == 1, seen
    assert "attempts" in seen["ledger"][0], (
        "the invocation ledger has no `attempts` column (issue 17: the ledger says how many "
        "attempts were made)"
    )
    assert seen["ledger"][0]["attempts"] == received, seen


def runs_across_a_restart(
    warden: Warden,
    endpoint: Endpoint,
    fault: Callable[[], object],
    *,
    runs: int = 4,
    label: str,
) -> dict:
    """Start `runs` runs (their tool calls take 2 s), inject `fault` once the first call is
    at the endpoint, and follow /readyz until it answered 503 and then 200 again."""
    run_ids = [warden.start_run(f"{label} {n} delay=2") for n in range(runs)]
    endpoint.wait_delivery(f"run:{run_ids[0]}:", timeout=60)
    with ReadyzWatch(warden) as watch:
        fault()
        faulted = time.monotonic()
        with contextlib.suppress(AssertionError):  # asserted by the caller, with what was seen
            wait_for(
                lambda: watch.back_up_after_down() or not warden.alive(),
                timeout=120,
                what="/readyz 503, then 200",
            )
    rows = warden.wait_final(run_ids, timeout=120)
    alive = warden.alive()
    return {
        "run_ids": run_ids,
        "rows": rows,
        "watch": watch,
        "alive": alive,
        "log": "" if alive else warden.log_tail(15),
        "recovered_in": time.monotonic() - faulted,
        # Read only from a Warden still up: with the launcher gone, so is its database.
        "seen": {r: survived(warden, endpoint, r, timeout=1) for r in run_ids} if alive else {},
    }


@dataclass
class LongCall:
    """One run whose tool call takes 150 s, on a Warden with a 20 s lease and two workers (the
    launcher's and a worker-only launcher's), observed from a thread."""

    outcome: dict = field(default_factory=dict)
    error: str = ""
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def result(self, timeout: float = LONG_CALL_SECONDS + 600) -> dict:
        self.start()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the long call did not end in time"
        assert not self.error, self.error
        return self.outcome

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(LONG_CALL_SECONDS + 600)

    def _run(self) -> None:
        model, endpoint = ModelServer(), Endpoint()
        warden = Warden(
            settings={
                "WARDEN_RUN_LEASE_SECONDS": str(LONG_LEASE_SECONDS),
                "WARDEN_RUN_RESUME_SECONDS": "2",
            },
            extra_workers=1,
        )
        try:
            warden.start(model=model, endpoint=endpoint)
            run_id = warden.start_run(f"a long call delay={LONG_CALL_SECONDS}")
            seen = survived(warden, endpoint, run_id, timeout=LONG_CALL_SECONDS + 240)
            self.outcome = {
                **seen,
                "run_id": run_id,
                "deliveries": endpoint.for_prefix(f"run:{run_id}:"),
                "alive": warden.alive(),
            }
        except BaseException:
            self.error = traceback.format_exc() + "\n" + warden.log_tail()
        finally:
            warden.stop()
            model.close()
            endpoint.close()
