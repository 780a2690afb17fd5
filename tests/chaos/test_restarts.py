"""Redis killed, PostgreSQL shut down fast, with runs in flight: the launcher restarts the
server, /readyz says which dependency is down while it is, and every run ends succeeded."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import runs_across_a_restart

pytestmark = pytest.mark.chaos


def check(result: dict, dependency: str) -> None:
    watch = result["watch"]
    print(f"\n/readyz: {watch.summary()}; runs final {result['recovered_in']:.1f} s after")
    assert result["alive"], f"the launcher exited:\n{result['log']}"
    assert watch.went_down_naming(dependency), watch.summary()
    assert watch.back_up_after_down(), watch.summary()
    states = {run_id: row.get("state") for run_id, row in result["rows"].items()}
    assert set(states.values()) == {"succeeded"}, result["rows"]
    for run_id, seen in result["seen"].items():
        (key,) = seen["keys"]
        assert seen["counts"][key][1] == 1, (run_id, seen)  # acted on once
        assert seen["duplicates"] == {}
        assert [r["key"] for r in seen["ledger"]] == [key]


def test_redis_killed_and_restarted_while_runs_are_in_flight(shared, endpoint):
    pid = None

    def kill():
        nonlocal pid
        pid = shared.kill_redis()

    result = runs_across_a_restart(shared, endpoint, kill, label="redis")

    assert pid is not None
    check(result, "redis")


def test_postgres_fast_shutdown_and_restart_while_runs_are_in_flight(shared, endpoint):
    pid = None

    def stop():
        nonlocal pid
        pid = shared.stop_postgres_fast()

    result = runs_across_a_restart(shared, endpoint, stop, label="postgres")

    assert pid is not None
    check(result, "database")
