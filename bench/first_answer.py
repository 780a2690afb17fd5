"""How long after `manage.py up` a first question is answered, from a fresh data directory.

Each trial starts the launcher (embedded PostgreSQL and Redis, migrate, the demo seed, daphne, a
worker, beat) in a directory of its own and reads its output: when the web server answered,
when the worker said it was ready, when the banner ("Warden is running") came. Then it asks
the demo agent a handbook question with `manage.py ask` and reads the run's own times from the
database: submitted to answered is the first answer's latency (the CLI's own start-up is not
part of it, and is printed beside it). A second question shows a warm run's latency, the floor
the first one is measured against.

    .venv/bin/python bench/first_answer.py --trials 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai_overhead import free_port  # bench/ is on the path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["Where do I collect my badge?", "How many days of annual leave do I get?"]


def _env(var: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(WARDEN_VAR_DIR=str(var), PORT=str(port), DJANGO_SETTINGS_MODULE="config.settings")
    return env


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def _run_times(env: dict[str, str]) -> list[dict]:
    code = (
        "import json; from agents.models import Run; print(json.dumps([{'id': r.pk, "
        "'state': r.state, 'answer_s': (r.finished_at - r.created_at).total_seconds(), "
        "'queued_s': (r.started_at - r.created_at).total_seconds()} "
        "for r in Run.objects.order_by('pk') if r.finished_at]))"
    )
    out = _manage("shell", "-c", code, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def trial(number: int) -> dict:
    var = Path(tempfile.mkdtemp(prefix="warden-first-"))
    port = free_port()
    env = _env(var, port)
    log = var / "up.log"
    marks: dict[str, float] = {}
    with open(log, "w") as out:
        started = time.monotonic()
        up = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            patterns = {
                "schema": "database schema is up to date",
                "worker_ready": "worker ready",
                "banner": "Warden is running",
            }
            while "banner" not in marks:
                if up.poll() is not None:
                    raise SystemExit(
                        f"manage.py up exited with {up.returncode}:\n{log.read_text()}"
                    )
                text = log.read_text()
                for key, pattern in patterns.items():
                    if key not in marks and pattern in text:
                        marks[key] = time.monotonic() - started
                time.sleep(0.05)
            asked = []
            for question in QUESTIONS:
                before = time.monotonic()
                done = _manage("ask", "help-desk", question, "--as", "member", env=env)
                asked.append(time.monotonic() - before)
                if done.returncode != 0:
                    raise SystemExit(f"ask exited {done.returncode}: {done.stdout}{done.stderr}")
            runs = _run_times(env)
            answer = re.search(r"\[\d+\]", done.stdout)
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
            shutil.rmtree(var, ignore_errors=True)
    result = {
        "trial": number,
        "ready_s": round(marks["banner"], 2),
        "schema_s": round(marks.get("schema", float("nan")), 2),
        "worker_ready_s": round(marks.get("worker_ready", float("nan")), 2),
        "first_answer_s": runs[0]["answer_s"],
        "first_queued_s": runs[0]["queued_s"],
        "second_answer_s": runs[1]["answer_s"],
        "ask_wall_s": [round(x, 2) for x in asked],
        "cited": bool(answer),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    results = [trial(i + 1) for i in range(args.trials)]
    print()
    print(f"{'':28}{'median':>10}{'max':>10}")
    for key, label in (
        ("ready_s", "start -> ready (banner)"),
        ("first_answer_s", "first answer (submitted->done)"),
        ("second_answer_s", "second answer (warm floor)"),
    ):
        values = [r[key] for r in results]
        print(f"{label:28}{statistics.median(values):>9.2f}s{max(values):>9.2f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
