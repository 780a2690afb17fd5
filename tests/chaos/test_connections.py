"""Every worker connection terminated (pg_terminate_backend) at three points of a run: a
transient database error retries the step on a fresh connection; it never ends the run, and the
tool's effect happens once."""

from __future__ import annotations

import uuid

import pytest

from tests.chaos.harness import wait_for
from tests.chaos.scenarios import assert_one_effect_per_call, survived

pytestmark = pytest.mark.chaos


def test_connections_terminated_during_a_tool_call(shared, endpoint):
    with endpoint.hold() as answer:
        run_id = shared.start_run("terminate during the tool call delay=0.5")
        endpoint.wait_delivery(f"run:{run_id}:", timeout=60)
        terminated = shared.terminate_backends()
        answer.set()

    assert terminated  # the worker's connection was open (it keeps it between tasks): now gone
    assert_one_effect_per_call(survived(shared, endpoint, run_id))


def test_connections_terminated_during_a_model_call(shared, endpoint, model):
    marker = f"m-{uuid.uuid4().hex[:8]}"
    with model.hold("call") as answer:
        run_id = shared.start_run(f"terminate during the model call {marker}")
        model.wait_call(marker, "call", timeout=60)
        terminated = shared.terminate_backends()
        answer.set()

    assert terminated
    assert_one_effect_per_call(survived(shared, endpoint, run_id))


def test_connections_terminated_during_the_checkpoint(shared, endpoint):
    """The run's row is locked while the endpoint answers, so the worker's first write to the
    run after the tool call (the step's checkpoint, or a fenced ledger write) waits on it:
    that waiting backend, and every other, is terminated, then the lock goes."""
    with endpoint.hold() as answer:
        run_id = shared.start_run("terminate during the checkpoint")
        endpoint.wait_delivery(f"run:{run_id}:", timeout=60)
        with shared.connect() as locker, locker.transaction():
            locker.execute("SELECT 1 FROM agents_run WHERE id = %s FOR UPDATE", [run_id])
            me = locker.info.backend_pid
            answer.set()
            waiting = wait_for(
                lambda: shared.query(
                    "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    [me],
                ),
                timeout=60,
                what="a worker's write to the run to wait on the locked row",
            )
            terminated = shared.terminate_backends(spare=(me,))

    assert {pid for (pid,) in waiting} <= set(terminated)
    assert_one_effect_per_call(survived(shared, endpoint, run_id))
