"""`make chaos`: the fault-injection suite's longer version.

Starts a Warden as `make run` does (`manage.py up`, embedded PostgreSQL and Redis) plus a second
worker under `manage.py up --worker-only`, then runs N trials (default 100): each starts a run
through the API and, at a seeded random point of it, injects one fault, mixing the kinds:
SIGKILL of the Celery worker holding the run, pg_terminate_backend of every worker connection,
SIGKILL of Redis, PostgreSQL fast shutdown. Prints the table the README quotes: trials, runs
lost, runs failed, duplicate effects, median and max recovery time (fault -> the run's next
step committed, or its end). Exit status 1 when a run was lost or failed or an effect doubled.

    python scripts/chaos.py --trials 100 --seed 17 --kinds worker,backends,redis,postgres
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
# The harness imports tests.processes, which imports ops.embedded only (no Django setup).


def main() -> int:
    from tests.chaos.harness import Endpoint, ModelServer, Warden
    from tests.chaos.trials import KINDS, fault_trials

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds")
    parser.add_argument(
        "--span", type=float, default=2.5, help="faults land 0..SPAN s after a run is taken"
    )
    parser.add_argument("--lease", help="WARDEN_RUN_LEASE_SECONDS (Warden's default: 10)")
    parser.add_argument("--resume", help="WARDEN_RUN_RESUME_SECONDS (Warden's default: 3)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per trial")
    args = parser.parse_args()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        parser.error(f"--kinds: choose among {', '.join(KINDS)}")

    model, endpoint = ModelServer(), Endpoint()
    overrides = {"WARDEN_RUN_LEASE_SECONDS": args.lease, "WARDEN_RUN_RESUME_SECONDS": args.resume}
    warden = Warden(
        settings={name: value for name, value in overrides.items() if value}, extra_workers=1
    )
    began = time.monotonic()
    try:
        print(f"chaos: starting Warden in {warden.var} ...", flush=True)
        warden.start(model=model, endpoint=endpoint)
        print(f"chaos: ready in {warden.started_in:.0f} s; {args.trials} trials", flush=True)
        say = (lambda line: print(f"chaos: {line}", flush=True)) if args.verbose else print_dot
        report = fault_trials(
            warden,
            endpoint,
            trials=args.trials,
            kinds=kinds,
            seed=args.seed,
            span=args.span,
            say=say,
        )
        alive = warden.alive()
    except BaseException:
        print(warden.log_tail(), file=sys.stderr)
        raise
    finally:
        warden.stop()
        model.close()
        endpoint.close()
    print()
    if args.verbose:
        print(report.details())
    print(
        f"seed {args.seed}, lease {args.lease or 'default'}, "
        f"resume sweep {args.resume or 'default'}, "
        f"{time.monotonic() - began:.0f} s in all; launcher alive at the end: {alive}"
    )
    print(report.table())
    for problem in report.ledger_problems:
        print(f"ledger: {problem}")
    bad = report.lost or report.failed or report.duplicates or report.aborted or not alive
    return 1 if bad or report.ledger_problems else 0


def print_dot(line: str) -> None:
    print(".", end="", flush=True)


if __name__ == "__main__":
    sys.exit(main())
