"""Latency the OpenAI-compatible endpoint adds over a direct litellm call, beside the LiteLLM proxy.

    make bench-openai        (builds the proxy's own virtualenv under var/, then runs this)
    .venv/bin/python bench/openai_overhead.py --proxy-python var/litellm-proxy/bin/python

Starts its own embedded PostgreSQL and Redis, a 0 ms OpenAI-compatible mock model (its own
process, keep-alive, streaming or not), and then, at 1, 10 and 50 concurrent clients (asyncio,
one HTTP connection each), measures per request:

- direct: `litellm.acompletion` to the mock (the floor);
- warden: POST /v1/chat/completions on daphne with Celery workers, as production runs them:
  an OAuth2 bearer token, the scope and the agent's access check, a budget that reserves and
  settles around the model call, the policy decision, the run and its steps committed with
  their audit events. The agent can only answer, so daphne advances up to
  WARDEN_FAST_PATH_RUNS of these runs itself and the workers the rest (the answer followed
  through the run's Redis event stream);
- proxy: the LiteLLM proxy (litellm[proxy], in its own virtualenv) configured with the same
  mock, authenticated with its master key (its spend tracking needs a database and Prisma, so it
  runs without one: it does less per request than Warden does).

Prints p50 and p99 per contender and concurrency, each one's added latency over direct, and
Warden's added latency over the proxy's. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token-0123456789"  # noqa: S105 - a throwaway database's
MASTER_KEY = "sk-bench-master"
ASGI = "config.asgi:application"
WORDS = ["The", "VPN", "is", "back", "up", "for", "everyone"]


# The mock model ----------------------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> dict:
    """The next request's JSON body on a keep-alive HTTP/1.1 connection (the mock models')."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return json.loads(await reader.readexactly(length)) if length else {}


async def _mock_handle(reader, writer) -> None:
    """HTTP/1.1 keep-alive, POST .../chat/completions only, answered at once."""
    try:
        while True:
            body = await read_request(reader)
            model = body.get("model", "mock")
            usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
            base = {"id": "chatcmpl-mock", "created": int(time.time()), "model": model}
            if body.get("stream"):
                events = []
                for i, word in enumerate(WORDS):
                    delta = {"content": word if i == 0 else " " + word}
                    if i == 0:
                        delta["role"] = "assistant"
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                    events.append({**base, "object": "chat.completion.chunk", "choices": [choice]})
                end = {"index": 0, "delta": {}, "finish_reason": "stop"}
                events.append({**base, "object": "chat.completion.chunk", "choices": [end]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append(
                        {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    )
                payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                kind = b"text/event-stream"
            else:
                message = {"role": "assistant", "content": " ".join(WORDS)}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                payload = json.dumps(
                    {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
                )
                kind = b"application/json"
            data = payload.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: "
                + kind
                + b"\r\nContent-Length: "
                + str(len(data)).encode()
                + b"\r\n\r\n"
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def mock_main(port: int) -> None:
    async def serve():
        server = await asyncio.start_server(_mock_handle, "127.0.0.1", port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# The stack ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM to each child, last started first; one that has not exited 20 s later is killed."""
    for child in reversed(children):
        child.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wait_http(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[:4]} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {seconds:g} s") from None
            time.sleep(0.3)


def warden_setup(mock_base: str):
    """An integration account with a token, an agent on the mock it may use, a budget."""
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone
    from oauth2_provider.models import AccessToken, Application

    from agents.models import Agent, Deployment, ModelRoute
    from audit.services import SYSTEM
    from governance.models import Action, Budget
    from governance.services import access_grant

    route = ModelRoute.objects.create(name="bench", num_retries=0)
    Deployment.objects.create(route=route, position=1, model="openai/mock", api_base=mock_base)
    agent = Agent.objects.create(name="Bench", slug="bench", route=route, confidence_threshold=0)
    user = get_user_model().objects.create_user("bench-integration")
    for obj in (agent, route):
        access_grant(obj=obj, holder=user, action=Action.USE, actor=SYSTEM)
    Budget.objects.create(name="Bench", user=user, max_tokens=10**12)  # reserve, then settle
    application = Application.objects.create(
        name="Bench",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        user=user,
    )
    AccessToken.objects.create(
        application=application,
        token=TOKEN,
        scope="agents:run",
        expires=timezone.now() + timedelta(days=1),
    )
    return agent


# The clients -------------------------------------------------------------------------------


async def _measure(call, clients: int, requests: int, warmup: int) -> list[float]:
    """`clients` loops, each making `requests` calls after `warmup`; milliseconds per call."""
    times: list[float] = []

    async def client(n: int) -> None:
        state = await call.open()
        try:
            for i in range(warmup + requests):
                began = time.perf_counter()
                await call(state)
                if i >= warmup:
                    times.append((time.perf_counter() - began) * 1000)
        finally:
            await call.close(state)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return times


class Direct:
    def __init__(self, mock_base: str):
        self.mock_base = mock_base

    async def open(self):
        return None

    async def close(self, state) -> None:
        pass

    async def __call__(self, state) -> None:
        import litellm

        reply = await litellm.acompletion(
            model="openai/mock",
            api_base=self.mock_base,
            api_key="none",
            messages=[{"role": "user", "content": "Is the VPN working?"}],
        )
        assert reply.choices[0].message.content == " ".join(WORDS), reply


class OverHTTP:
    def __init__(self, url: str, model: str, key: str):
        self.url, self.model, self.key = url, model, key

    async def open(self):
        import httpx

        return httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=120,
            limits=httpx.Limits(max_connections=1),
        )

    async def close(self, state) -> None:
        await state.aclose()

    async def __call__(self, state) -> None:
        response = await state.post(
            self.url,
            json={
                "model": self.model,
                "messages": [{"role": "user", "content": "Is the VPN working?"}],
            },
        )
        body = response.json()
        assert response.status_code == 200, body
        assert body["choices"][0]["message"]["content"] == " ".join(WORDS), body


def run_phases(*, since) -> tuple[float, float]:
    from agents.models import Run

    runs = Run.objects.filter(created_at__gte=since, state="succeeded")
    times = runs.values_list("created_at", "started_at", "finished_at")
    queued = [(s - c).total_seconds() * 1000 for c, s, _ in times]
    executed = [(f - s).total_seconds() * 1000 for _, s, f in times]
    return statistics.median(queued), statistics.median(executed)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def bench_environment() -> dict[str, str]:
    """This process's environment (and its children's) set for a benchmark on throwaway
    embedded servers in a new data directory, never the developer's; returned as set."""
    env = {
        **os.environ,
        "WARDEN_VAR_DIR": tempfile.mkdtemp(prefix="warden-bench-"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOG_LEVEL": "WARNING",
        "WARDEN_API_RATE": "100000000/min",  # DRF's per-account throttle off the path
        "WARDEN_API_MAX_WAITS": "1000",  # and the cap on one account's open waits (50 clients)
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    os.environ.clear()
    os.environ.update(env)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--requests", type=int, default=200, help="measured, per level")
    parser.add_argument("--warmup", type=int, default=2, help="calls per client first")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--proxy-python", default=str(ROOT / "var/litellm-proxy/bin/python"))
    parser.add_argument("--mock", type=int, help=argparse.SUPPRESS)  # internal: serve the mock
    args = parser.parse_args()
    if args.mock:
        return mock_main(args.mock)

    env = bench_environment()
    var = env["WARDEN_VAR_DIR"]

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.utils import timezone

    from ops.embedded import EmbeddedPostgres, EmbeddedRedis

    servers = [EmbeddedPostgres(settings.EMBEDDED), EmbeddedRedis(settings.EMBEDDED)]
    children: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        for server in servers:
            server.start()
        call_command("migrate", verbosity=0)
        mock_port, web_port, proxy_port = free_port(), free_port(), free_port()
        mock_base = f"http://127.0.0.1:{mock_port}/v1"
        children.append(
            subprocess.Popen([sys.executable, __file__, "--mock", str(mock_port)], **quiet)
        )
        agent = warden_setup(mock_base)
        connections.close_all()
        python = sys.executable
        children.append(
            subprocess.Popen(
                [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), ASGI],
                cwd=ROOT,
                **quiet,
            )
        )
        worker = [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING"]
        worker += ["--concurrency", str(args.workers), "--without-mingle", "--without-gossip"]
        children.append(subprocess.Popen(worker, cwd=ROOT, **quiet))
        proxy_dir = Path(var) / "proxy"
        proxy_dir.mkdir()
        (proxy_dir / "config.yaml").write_text(
            json.dumps(  # JSON is YAML
                {
                    "model_list": [
                        {
                            "model_name": "mock",
                            "litellm_params": {
                                "model": "openai/mock",
                                "api_base": mock_base,
                                "api_key": "none",
                            },
                        }
                    ],
                    "litellm_settings": {"telemetry": False, "num_retries": 0},
                    "general_settings": {"master_key": MASTER_KEY},
                }
            )
        )
        proxy = None
        if Path(args.proxy_python).exists():
            cli = str(Path(args.proxy_python).absolute().with_name("litellm"))
            proxy = subprocess.Popen(
                [
                    cli,
                    "--config",
                    str(proxy_dir / "config.yaml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(proxy_port),
                    "--num_workers",
                    "1",
                ],
                cwd=proxy_dir,
                env={**env, "LITELLM_TELEMETRY": "False"},
                **quiet,
            )
            children.append(proxy)
        else:
            print(f"no LiteLLM proxy at {args.proxy_python} (make bench-openai installs it)")
        web_url = f"http://127.0.0.1:{web_port}"
        wait_http(f"{web_url}/healthz", children[1])
        if proxy is not None:
            wait_http(f"http://127.0.0.1:{proxy_port}/health/liveliness", proxy)
        time.sleep(2)  # the worker's pool is up
        if children[2].poll() is not None:
            raise SystemExit(f"the Celery worker exited with {children[2].returncode}")

        import agents.gateway.client  # noqa: F401 - litellm as Warden sets it up

        contenders = {
            "direct": Direct(mock_base),
            "warden": OverHTTP(f"{web_url}/v1/chat/completions", f"agent:{agent.slug}", TOKEN),
        }
        if proxy is not None:
            contenders["proxy"] = OverHTTP(
                f"http://127.0.0.1:{proxy_port}/v1/chat/completions", "mock", MASTER_KEY
            )
        levels = [int(c) for c in args.concurrency.split(",")]
        results: dict[tuple[str, int], list[float]] = {}
        phases: dict[int, tuple[float, float]] = {}
        for clients in levels:
            each = max(1, args.requests // clients)
            for name, call in contenders.items():  # interleaved per level
                began = timezone.now()
                results[name, clients] = asyncio.run(_measure(call, clients, each, args.warmup))
                if name == "warden":
                    phases[clients] = run_phases(since=began)
        report(results, levels, list(contenders), args)
        print(
            "Warden's runs, median ms: queued (committed -> daphne or a worker starts it), "
            "executed (started -> finished), the rest is the endpoint and the wake-up"
        )
        for clients, (queued, executed) in phases.items():
            total = percentile(results["warden", clients], 50)
            print(
                f"{clients:>7} clients: queued {queued:.1f}, executed {executed:.1f}, "
                f"rest {total - queued - executed:.1f} (of p50 {total:.1f})"
            )
    finally:
        stop(children)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(var, ignore_errors=True)


def report(results, levels, names, args) -> None:
    print(
        f"POST /v1/chat/completions, non-streaming, 0 ms mock model; {os.cpu_count()} CPUs, "
        f"{args.workers} Celery worker processes, 1 daphne, 1 proxy worker; "
        f"~{args.requests} measured requests per level after {args.warmup} per client"
    )
    header = f"{'clients':>7} {'contender':>9} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}"
    print(header + f" {'+p50 over direct':>17} {'+p99 over direct':>17}")
    for clients in levels:
        floor = results["direct", clients]
        f50, f99 = percentile(floor, 50), percentile(floor, 99)
        for name in names:
            t = results[name, clients]
            p50, p99 = percentile(t, 50), percentile(t, 99)
            print(
                f"{clients:>7} {name:>9} {len(t):>5} {p50:>8.1f} {p99:>8.1f}"
                f" {p50 - f50:>17.1f} {p99 - f99:>17.1f}"
            )
    if "proxy" not in names:
        return
    print("Added latency, Warden over the LiteLLM proxy (each minus direct):")
    for clients in levels:
        floor = results["direct", clients]
        parts = []
        for p in (50, 99):
            w = percentile(results["warden", clients], p) - percentile(floor, p)
            x = percentile(results["proxy", clients], p) - percentile(floor, p)
            ratio = f"{w / x:.2f}x" if x > 0 else "n/a (proxy adds nothing)"
            parts.append(f"p{p} {w:.1f} / {x:.1f} ms = {ratio}")
        print(f"{clients:>7} clients: " + "; ".join(parts))
    mean = statistics.mean
    print(
        "mean per request (ms): "
        + ", ".join(f"{n}@{c}={mean(results[n, c]):.1f}" for c in levels for n in names)
    )


if __name__ == "__main__":
    main()
