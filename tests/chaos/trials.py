"""Faults at seeded random points of runs: the loop the suite's worker-kill test and
scripts/chaos.py (`make chaos`) share, and the table it prints."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import psycopg

from tests.chaos.harness import FINAL, Endpoint, Warden, wait_for

KINDS = ("worker", "backends", "redis", "postgres")


@dataclass
class Trial:
    run_id: int
    kind: str
    delay: float
    injected_at: float = 0.0
    steps_at_fault: int = 0
    state_at_fault: str = ""
    token_at_fault: int = 0
    # worker kills: fault -> another worker took the run's lease (a higher fencing token)
    resumed_in: float | None = None
    recovered_in: float | None = None  # fault -> the run's next step committed, or success
    ended_unrecovered: bool = False  # it ended otherwise (failed, say) with no step after


@dataclass
class TrialReport:
    trials: list[Trial]
    rows: dict[int, dict]
    duplicates: dict[str, int]
    ledger_problems: list[str]
    aborted: str = ""

    @property
    def lost(self) -> list[int]:
        rows = self.rows
        return [t.run_id for t in self.trials if rows.get(t.run_id, {}).get("state") not in FINAL]

    @property
    def failed(self) -> list[int]:
        return [
            t.run_id
            for t in self.trials
            if self.rows.get(t.run_id, {}).get("state") in FINAL
            and self.rows[t.run_id]["state"] != "succeeded"
        ]

    @property
    def recoveries(self) -> list[float]:
        return [t.recovered_in for t in self.trials if t.recovered_in is not None]

    @property
    def resumptions(self) -> list[float]:
        """Seconds from a worker's SIGKILL to another worker holding the run it held."""
        return [t.resumed_in for t in self.trials if t.resumed_in is not None]

    def table(self) -> str:
        kinds = sorted({t.kind for t in self.trials})
        lines = [
            "| trials | fault kinds | runs lost | runs failed | duplicate effects "
            "| recovery, median / max | worker death to resumed, median / max |",
            "|---|---|---|---|---|---|---|",
            f"| {len(self.trials)} | {', '.join(kinds)} | {len(self.lost)} | {len(self.failed)} "
            f"| {sum(n - 1 for n in self.duplicates.values())} | {_spread(self.recoveries)} "
            f"| {_spread(self.resumptions)} |",
        ]
        if self.aborted:
            lines.append(f"aborted: {self.aborted}")
        return "\n".join(lines)

    def details(self) -> str:
        out = []
        for t in self.trials:
            row = self.rows.get(t.run_id, {})
            rec = "-" if t.recovered_in is None else f"{t.recovered_in:.1f} s"
            resumed = "" if t.resumed_in is None else f" resumed {t.resumed_in:.1f} s"
            out.append(
                f"run {t.run_id}: {t.kind} after {t.delay:.2f} s (state {t.state_at_fault}, "
                f"{t.steps_at_fault} steps) -> {row.get('state')} token={row.get('token')} "
                f"recovery {rec}{resumed} {row.get('error') or ''}".rstrip()
            )
        return "\n".join(out)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} s / {max(values):.1f} s"


def inject(warden: Warden, kind: str, *, run_id: int | None = None) -> tuple[int, int] | None:
    """One fault of `kind`; for "worker", the worker holding `run_id` (else any). Returns the
    process stopped and its launcher's process id (None: no process stopped)."""
    if kind == "worker":
        workers = warden.workers()
        assert workers, "no live Celery worker to kill"
        holder = warden.run_row(run_id)["holder"] if run_id else ""
        target = warden.worker_holding(holder) or random.choice(workers)
        launcher = target.ppid()
        warden.kill_worker(target)
        return target.pid, launcher
    if kind == "backends":
        warden.terminate_backends()
        return None
    if kind == "redis":
        return warden.kill_redis(), warden.up.process.pid
    if kind == "postgres":
        return warden.stop_postgres_fast(), warden.up.process.pid
    raise ValueError(kind)


# The launcher gives up on a process that exits 5 times within 60 s (a crash loop, not bad
# luck): faults of one kind on one launcher stay below that, or the test would be of the
# give-up rule.
PACE_FAULTS = 3
PACE_WINDOW = 65.0


def _pace(history: dict[tuple[int, str], list[float]]) -> None:
    """Wait until no launcher has had PACE_FAULTS faults of one kind within PACE_WINDOW."""
    while True:
        now = time.monotonic()
        for times in history.values():
            times[:] = [t for t in times if now - t < PACE_WINDOW]
        full = [times[0] for times in history.values() if len(times) >= PACE_FAULTS]
        if not full:
            return
        time.sleep(max(0.1, min(full) + PACE_WINDOW - now))


def fault_trials(
    warden: Warden,
    endpoint: Endpoint,
    *,
    trials: int,
    kinds: tuple[str, ...],
    seed: int,
    span: float = 2.5,
    recovery_timeout: float = 60,
    drain_timeout: float = 120,
    say: Callable[[str], None] = lambda line: None,
) -> TrialReport:
    """`trials` runs, one fault each at a seeded random point: `delay` seconds (uniform in
    [0, span)) after the run was taken by a worker. Each waits until the fault's process is
    back (the launcher restarts it) before the next, so faults do not pile up; recovery is
    measured per run by a monitor thread: fault -> the run's next step committed or its end."""
    rng = random.Random(seed)
    done: list[Trial] = []
    watching: list[Trial] = []
    stop = threading.Event()
    lock = threading.Lock()

    def monitor() -> None:
        while not stop.is_set():
            with lock:
                pending = [
                    t
                    for t in watching
                    if not t.ended_unrecovered
                    and (t.recovered_in is None or (t.kind == "worker" and t.resumed_in is None))
                ]
            if pending:
                try:
                    rows = warden.runs([t.run_id for t in pending])
                except psycopg.Error:
                    rows = {}
                now = time.monotonic()
                for t in pending:
                    row = rows.get(t.run_id)
                    if not row:
                        continue
                    taken = row["token"] > t.token_at_fault or row["state"] == "succeeded"
                    if t.kind == "worker" and t.resumed_in is None and taken:
                        t.resumed_in = now - t.injected_at
                    if t.recovered_in is not None:
                        continue
                    if row["steps"] > t.steps_at_fault or row["state"] == "succeeded":
                        t.recovered_in = now - t.injected_at
                    elif row["state"] in FINAL:
                        t.ended_unrecovered = True
            stop.wait(0.1)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    aborted = ""
    history: dict[tuple[int, str], list[float]] = {}  # (launcher, kind) -> fault times
    try:
        for n in range(trials):
            kind = kinds[rng.randrange(len(kinds))]
            delay = rng.uniform(0, span)
            try:
                run_id = warden.start_run(f"trial {n} seed {seed} delay=2")
                wait_for(
                    lambda r=run_id: (
                        warden.run_row(r)["holder"] or warden.run_row(r)["state"] in FINAL
                    ),
                    timeout=recovery_timeout,
                    what=f"run {run_id} to be taken by a worker",
                )
                time.sleep(delay)  # the random point, after the run started
                row = warden.run_row(run_id)
                trial = Trial(
                    run_id, kind, delay, steps_at_fault=row["steps"], token_at_fault=row["token"]
                )
                trial.state_at_fault = row["state"]
                trial.injected_at = time.monotonic()
                stopped = inject(warden, kind, run_id=run_id)
                if stopped is not None:
                    history.setdefault((stopped[1], kind), []).append(time.monotonic())
                if row["state"] in FINAL:
                    trial.recovered_in = None  # the point fell after the run's end
                with lock:
                    done.append(trial)
                    if row["state"] not in FINAL:
                        watching.append(trial)
                say(f"trial {n}: {kind} at +{delay:.2f} s on run {run_id} ({row['state']})")
                # The faulted process comes back before the next trial (or the trial fails).
                _wait_back(warden, kind, stopped and stopped[0], timeout=recovery_timeout)
                _pace(history)
            except (AssertionError, psycopg.Error, OSError) as exc:
                aborted = f"trial {n}: {type(exc).__name__}: {exc}"
                say(aborted)
                break
        rows = warden.wait_final([t.run_id for t in done], timeout=drain_timeout)
        # the monitor catches recoveries up to the drain's end
        time.sleep(0.3)
    finally:
        stop.set()
        watcher.join(5)
    problems = []
    for t in done:
        keys = warden.step_keys(t.run_id) if rows else []
        ledger = [r["key"] for r in warden.ledger(t.run_id)] if rows else []
        if len(ledger) != len(set(ledger)) or sorted(set(keys)) != sorted(set(ledger)):
            problems.append(f"run {t.run_id}: steps {keys} ledger {ledger}")
    return TrialReport(done, rows, endpoint.duplicate_effects(), problems, aborted)


def _wait_back(warden: Warden, kind: str, stopped: int | None, *, timeout: float) -> None:
    if kind == "worker":
        warden.wait_workers(timeout=timeout)
        return
    if stopped is not None:  # a new server process, not the old one before it was noticed

        def replaced() -> bool:
            if not warden.alive():
                raise AssertionError(f"the launcher exited:\n{warden.log_tail(8)}")
            try:
                name = "redis-server" if kind == "redis" else "postgres"
                return warden.server_process(name).pid != stopped
            except (AssertionError, psutil.NoSuchProcess):
                return False

        wait_for(replaced, timeout=timeout, what=f"{kind} started again", step=0.2)
    wait_for(lambda: warden.readyz()[0] == 200, timeout=timeout, what="/readyz 200", step=0.25)
