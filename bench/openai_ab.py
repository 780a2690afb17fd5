"""Two versions of Warden's OpenAI-compatible endpoint side by side, at one client.

    .venv/bin/python bench/openai_ab.py --before ../warden-before [--requests 1500]

`--before` is another checkout of Warden (say `git worktree add ../warden-before <commit>`),
with the same migrations as this one. One embedded PostgreSQL and Redis, one 0 ms mock model
(bench/openai_overhead.py's), and two daphne processes, one running each checkout's code on
the same database; requests go to one and then the other, alternating which goes first, so a
swing in the machine's speed touches both alike (this 2-core machine's speed moves by half
from one minute to the next, which separate benchmark runs cannot tell from a change). Both
are slower than alone: two web processes share the cores. Prints p50, p90 and p99 of each and
their ratios. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--requests", type=int, default=1500, help="measured, per version")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    before = args.before.resolve()
    if not (before / "config" / "asgi.py").exists():
        raise SystemExit(f"{before} is not a Warden checkout (no config/asgi.py)")

    import openai_overhead as bench

    var = bench.bench_environment()["WARDEN_VAR_DIR"]
    import django

    django.setup()
    import httpx
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    from ops.embedded import EmbeddedPostgres, EmbeddedRedis

    servers = [EmbeddedPostgres(settings.EMBEDDED), EmbeddedRedis(settings.EMBEDDED)]
    children: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        for server in servers:
            server.start()
        call_command("migrate", verbosity=0)
        mock_port = bench.free_port()
        command = [sys.executable, bench.__file__, "--mock", str(mock_port)]
        children.append(subprocess.Popen(command, **quiet))
        agent = bench.warden_setup(f"http://127.0.0.1:{mock_port}/v1")
        connections.close_all()
        urls = {}
        for name, checkout in (("before", before), ("this", ROOT)):
            port = bench.free_port()
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
            children.append(subprocess.Popen([*command, bench.ASGI], cwd=checkout, **quiet))
            bench.wait_http(f"http://127.0.0.1:{port}/healthz", children[-1])
            urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {
            "model": f"agent:{agent.slug}",
            "messages": [{"role": "user", "content": "Is the VPN working?"}],
        }
        times: dict[str, list[float]] = {"before": [], "this": []}
        headers = {"Authorization": f"Bearer {bench.TOKEN}"}
        with httpx.Client(headers=headers, timeout=120) as client:
            for i in range(args.warmup + args.requests):
                for name in ("before", "this") if i % 2 else ("this", "before"):
                    began = time.perf_counter()
                    response = client.post(urls[name], json=body)
                    took = (time.perf_counter() - began) * 1000
                    if response.status_code != 200:
                        raise SystemExit(f"{name}: {response.status_code} {response.text[:300]}")
                    if i >= args.warmup:
                        times[name].append(took)
        print(
            f"POST /v1/chat/completions at one client, {args.requests} requests each, "
            f"alternated; before = {before}"
        )
        figures = {}
        for name, values in times.items():
            values.sort()
            figures[name] = [
                statistics.median(values),
                values[int(len(values) * 0.9)],
                values[int(len(values) * 0.99)],
            ]
            print(
                f"  {name:>6}: p50 {figures[name][0]:.1f}  p90 {figures[name][1]:.1f}  "
                f"p99 {figures[name][2]:.1f} ms"
            )
        ratios = [this / was for this, was in zip(figures["this"], figures["before"], strict=True)]
        print("  this / before: " + "  ".join(f"{r:.2f}" for r in ratios) + " (p50 p90 p99)")
    finally:
        bench.stop(children)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
