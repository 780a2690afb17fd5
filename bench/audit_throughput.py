"""Audit trail write throughput: chained events against plain INSERTs, 1, 2 and 8 writers.

    .venv/bin/python bench/audit_throughput.py [--seconds 3] [--rounds 3] [--json FILE]

Starts its own embedded PostgreSQL in a temporary directory. Each writer is a process that
commits one event per transaction for the given time, as services do. "chained" is the real
`audit_record` (stream lock, hash, append) with every writer on its own stream (unrelated
runs); "one stream" puts every writer on the same stream (the worst case, serialised by design);
"floor" INSERTs the same rows into a table with no chain, no trigger and no lock. The three are
measured in turn, round after round, so a change in the machine's speed touches each alike; the
table shows each figure's median and the range of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

from _env import embedded


def writer(kind: str, index: int, seconds: float, start, counts) -> None:
    from django.db import connection, transaction

    from audit.services import Target, audit_record

    target = Target("bench.thing", str(index))
    stream = "run:shared" if kind == "one stream" else f"run:{os.getpid()}"
    start.wait()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with transaction.atomic():
            if kind == "floor":
                with connection.cursor() as cursor:
                    cursor.execute(FLOOR_INSERT, [stream, done, index])
            else:
                audit_record(
                    actor=None,
                    action="bench.step",
                    target=target,
                    data={"i": done, "tokens": 128},
                    stream=stream,
                )
        done += 1
    counts[index] = done
    connection.close()


FLOOR_INSERT = """
INSERT INTO bench_plain (time, stream, stream_seq, actor_type, actor_id, actor_label, action,
    target_type, target_id, target_label, run, conversation, data, prev_hash, hash)
VALUES (now(), %s, %s, 'system', '', 'warden', 'bench.step', 'bench.thing', %s::text, '', '', '',
    '{"i":0,"tokens":128}', repeat('0', 64), md5(random()::text) || md5(random()::text))
"""


def measure(kind: str, writers: int, seconds: float) -> float:
    from django.db import connections

    connections.close_all()  # each forked writer opens its own connection
    context = multiprocessing.get_context("fork")
    start = context.Barrier(writers + 1)
    counts = context.Array("q", writers)
    processes = [
        context.Process(target=writer, args=(kind, i, seconds, start, counts))
        for i in range(writers)
    ]
    for process in processes:
        process.start()
    start.wait()
    began = time.monotonic()
    for process in processes:
        process.join()
    return sum(counts) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds per writer count (median kept)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    with embedded():
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            # Same columns, indexes and identity; no trigger (LIKE never copies triggers), no lock.
            cursor.execute("CREATE TABLE bench_plain (LIKE audit_auditevent INCLUDING ALL)")
        print(
            f"audit write throughput, {os.cpu_count()} CPUs, {args.seconds:.0f} s per figure, "
            f"one event per transaction, median of {args.rounds} interleaved rounds"
        )
        row = "{:>8} {:>13} {:>11} {:>6} {:>13} {:>16}".format
        print(
            row("writers", "chained ev/s", "floor ev/s", "ratio", "ratio range", "one stream ev/s")
        )
        figures = []
        for writers in (1, 2, 8):
            rounds = [
                {kind: measure(kind, writers, args.seconds) for kind in KINDS}
                for _ in range(args.rounds)
            ]
            ratios = [each["chained"] / each["floor"] for each in rounds]
            figure = {
                "writers": writers,
                **{kind: statistics.median(each[kind] for each in rounds) for kind in KINDS},
                "ratio": statistics.median(ratios),
                "ratios": ratios,
            }
            figures.append(figure)
            print(
                row(
                    writers,
                    f"{figure['chained']:,.0f}",
                    f"{figure['floor']:,.0f}",
                    f"{figure['ratio']:.2f}",
                    f"{min(ratios):.2f}-{max(ratios):.2f}",
                    f"{figure['one stream']:,.0f}",
                )
            )
        from audit.selectors import audit_verify_chain

        report = audit_verify_chain()
        print(f"chain after the run: {report.summary()}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "date": time.strftime("%Y-%m-%d"),
                        "cpus": os.cpu_count(),
                        "seconds": args.seconds,
                        "rounds": args.rounds,
                        "figures": figures,
                        "chain": report.summary(),
                    },
                    indent=2,
                )
                + "\n"
            )


KINDS = ("chained", "floor", "one stream")


if __name__ == "__main__":
    main()
