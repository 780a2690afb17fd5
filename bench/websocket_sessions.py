"""Many live chat sessions at once: websockets held open, answers streamed into some of them.

    make bench-ws                 (1,000 sockets; loopback only, bounded by --seconds)
    .venv/bin/python bench/websocket_sessions.py --sockets 1000 --streams 100 --seconds 60

Starts its own embedded PostgreSQL and Redis, daphne (one process, as `manage.py up` runs it)
and a Celery worker, and a mock model that streams its answer a token every --token-ms. Each of
--sockets users signs in (a real session, `Client.force_login`) and opens the chat's websocket
(`/ws/`, the session cookie, the page's Origin) subscribed to a conversation of their own, as
the chat page does. Once every socket is open, --streams of those conversations get a question
(`agents.submit.run_submit`, the chat's own front door), spread over the first half of
--seconds; the rest of the sockets stay idle, hearing only keep-alives.

Measured, client side: how long sockets took to open; each token's delivery latency (the time a
frame arrives minus the time Redis logged the event, from its stream id: one clock, loopback);
sockets closed or failed that should not have been; and, for each streamed run, whether its
socket received every event the run logged, exactly once (a replay counts). Also daphne's
resident memory and CPU time. Prints the figures and writes them as JSON with --json. Not a
test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from openai_overhead import free_port, read_request, stop, wait_http  # bench/ is on the path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ASGI = "config.asgi:application"


# The mock model: a streamed answer, a token every `token_ms` ------------------------------


def mock_main(port: int, tokens: int, token_ms: float) -> None:
    async def handle(reader, writer) -> None:
        try:
            while True:
                body = await read_request(reader)
                base = {"id": "chatcmpl-mock", "created": int(time.time()), "model": "mock"}
                base["object"] = "chat.completion.chunk"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )

                def chunk(event: dict | str) -> bytes:
                    data = f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"
                    raw = data.encode()
                    return f"{len(raw):x}\r\n".encode() + raw + b"\r\n"

                for i in range(tokens):
                    delta = {"content": f"w{i} ", **({"role": "assistant"} if i == 0 else {})}
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                    writer.write(chunk({**base, "choices": [choice]}))
                    await writer.drain()
                    await asyncio.sleep(token_ms / 1000)
                end = {"index": 0, "delta": {}, "finish_reason": "stop"}
                writer.write(chunk({**base, "choices": [end]}))
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": 20, "completion_tokens": tokens}
                    usage["total_tokens"] = 20 + tokens
                    writer.write(chunk({**base, "choices": [], "usage": usage}))
                writer.write(chunk("[DONE]") + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# Warden's side ----------------------------------------------------------------------------


def setup(mock_base: str, sockets: int):
    """An agent on the mock, `sockets` members who may use it, a session and a conversation
    each: [(user, session cookie, conversation id)]."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    from agents.models import Agent, Conversation, Deployment, ModelRoute
    from audit.services import SYSTEM
    from governance.models import Action
    from governance.services import access_grant

    route = ModelRoute.objects.create(name="bench", num_retries=0)
    Deployment.objects.create(route=route, position=1, model="openai/mock", api_base=mock_base)
    agent = Agent.objects.create(name="Bench", slug="bench", route=route, confidence_threshold=0)
    group = Group.objects.create(name="bench-members")
    for obj in (agent, route):
        access_grant(obj=obj, holder=group, action=Action.USE, actor=SYSTEM)
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"member{i:04}", password="!")  # noqa: S106 - unusable
        for i in range(sockets)
    )
    group.user_set.add(*users)
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=user, agent=agent, title="bench") for user in users
    )
    client = Client()
    sessions = []
    for user, conversation in zip(users, conversations, strict=True):
        client.force_login(user)
        sessions.append((user, client.cookies["sessionid"].value, conversation.pk))
        client.cookies.clear()
    return agent, sessions


class Socket:
    """One chat page's websocket, recording what it hears."""

    def __init__(self, number: int, cookie: str, conversation: int):
        self.number, self.cookie, self.conversation = number, cookie, conversation
        self.opened_ms: float | None = None
        self.closed: str | None = None  # why, if it closed before the end
        self.ids: dict[int, list[str]] = defaultdict(list)  # run -> event ids heard, in order
        self.latencies: list[float] = []  # ms, live token events
        self.heard_at: list[float] = []  # when each of those arrived (epoch ms)
        self.keepalives = 0

    async def run(self, session, url: str, origin: str, stop: asyncio.Event) -> None:
        started = time.monotonic()
        try:
            async with session.ws_connect(
                url,
                headers={"Cookie": f"sessionid={self.cookie}", "Origin": origin},
                heartbeat=None,
                autoping=True,
                max_msg_size=0,
            ) as ws:
                subscribe = {"type": "subscribe", "conversation": self.conversation}
                await ws.send_str(json.dumps(subscribe))
                reader = asyncio.ensure_future(self._read(ws, started))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait([reader, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    reader.cancel()
                    await ws.close()
                elif self.closed is None:
                    self.closed = f"closed by the server ({ws.close_code})"
                stopping.cancel()
        except Exception as exc:  # a socket that could not open or broke: counted as dropped
            self.closed = f"{type(exc).__name__}: {exc}"

    async def _read(self, ws, started: float) -> None:
        import aiohttp

        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            now_ms = time.time() * 1000
            frame = json.loads(message.data)
            kind = frame.get("type")
            if kind == "subscribed" and self.opened_ms is None:
                self.opened_ms = (time.monotonic() - started) * 1000
            elif kind == "keepalive":
                self.keepalives += 1
            elif kind == "replay":
                self.ids[frame["run"]] += [e["id"] for e in frame["events"] if e["id"]]
            elif kind == "event":
                self.ids[frame["run"]].append(frame["id"])
                if frame["event"].get("type") == "token":
                    self.latencies.append(now_ms - int(frame["id"].split("-")[0]))
                    self.heard_at.append(now_ms)


async def drive(args, sessions, web_url: str, agent) -> dict:
    import aiohttp
    from asgiref.sync import sync_to_async

    from agents.submit import run_submit

    ws_url = web_url.replace("http", "ws", 1) + "/ws/"
    stop = asyncio.Event()
    sockets = [Socket(i, cookie, conv) for i, (_, cookie, conv) in enumerate(sessions)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.monotonic()
        tasks = []
        for i, sock in enumerate(sockets):
            tasks.append(asyncio.ensure_future(sock.run(session, ws_url, web_url, stop)))
            if i % 10 == 9:
                await asyncio.sleep(10 / args.arrivals)  # a crowd arriving at a rate
        deadline = time.monotonic() + 120
        while sum(s.opened_ms is not None or s.closed is not None for s in sockets) < len(sockets):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        opened_s = time.monotonic() - began

        streamed = sockets[:: max(1, len(sockets) // args.streams)][: args.streams]
        runs: dict[int, Socket] = {}
        spread = args.seconds / 2 / max(1, len(streamed))
        submit = sync_to_async(run_submit, thread_sensitive=False)
        for sock in streamed:
            user = sessions[sock.number][0]
            run = await submit(
                actor=user,
                agent=agent,
                input="Tell me everything.",
                conversation=sock.conversation,
                surface="chat",
            )
            runs[run.pk] = sock
            await asyncio.sleep(spread)
        await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - began - opened_s)))
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"sockets": sockets, "runs": runs, "opened_s": opened_s}


def logged_ids(run_ids) -> dict[int, list[str]]:
    import redis
    from django.conf import settings

    from agents.events import stream_key

    client = redis.Redis.from_url(settings.REDIS_URL)
    return {
        run_id: [sid.decode() for sid, _ in client.xrange(stream_key(run_id))] for run_id in run_ids
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=100, help="sockets a run streams into")
    parser.add_argument("--seconds", type=float, default=60, help="how long the sockets stay open")
    parser.add_argument("--arrivals", type=float, default=100, help="sockets opened a second")
    parser.add_argument("--tokens", type=int, default=40, help="tokens an answer streams")
    parser.add_argument("--token-ms", type=float, default=25, help="the mock's pace")
    parser.add_argument("--workers", type=int, default=8, help="Celery worker processes")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--mock", nargs=3, help=argparse.SUPPRESS)  # internal: serve the mock
    args = parser.parse_args()
    if args.mock:
        return mock_main(int(args.mock[0]), int(args.mock[1]), float(args.mock[2]))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * args.sockets)), hard))
    from _env import embedded  # the throwaway data directory, for this process and its children

    with embedded(redis=True):
        run_stack(args)


def run_stack(args) -> None:
    """The mock, daphne and a worker on the embedded servers; the sockets driven; the report."""
    import psutil
    from django.core.management import call_command
    from django.db import connections

    from config.celery import app

    call_command("migrate", verbosity=0)
    children: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        mock_port, web_port = free_port(), free_port()
        mock = [sys.executable, __file__, "--mock", str(mock_port), str(args.tokens)]
        children.append(subprocess.Popen([*mock, str(args.token_ms)], **quiet))
        agent, sessions = setup(f"http://127.0.0.1:{mock_port}/v1", args.sockets)
        connections.close_all()
        web = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), ASGI],
            cwd=ROOT,
            **quiet,
        )
        children.append(web)
        worker = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING"]
        worker += ["--concurrency", str(args.workers), "--without-mingle", "--without-gossip"]
        children.append(subprocess.Popen(worker, cwd=ROOT, **quiet))
        web_url = f"http://127.0.0.1:{web_port}"
        wait_http(f"{web_url}/healthz", web)
        while not app.control.ping(timeout=1):
            pass
        daphne = psutil.Process(web.pid)
        cpu_before = sum(daphne.cpu_times()[:2])
        result = asyncio.run(drive(args, sessions, web_url, agent))
        cpu = sum(daphne.cpu_times()[:2]) - cpu_before
        rss = daphne.memory_info().rss / 2**20
        time.sleep(2)  # the last runs' logs are complete
        report(args, result, logged_ids(result["runs"]), cpu=cpu, rss=rss)
    finally:
        stop(children)
        connections.close_all()


def report(args, result, logged, *, cpu: float, rss: float) -> None:
    sockets, runs = result["sockets"], result["runs"]
    opened = [s.opened_ms for s in sockets if s.opened_ms is not None]
    dropped = [s for s in sockets if s.closed is not None]
    latencies = sorted(x for s in sockets for x in s.latencies)
    lost = duplicated = events = 0
    unfinished = []
    for run_id, sock in runs.items():
        heard, expected = sock.ids.get(run_id, []), logged[run_id]
        events += len(expected)
        lost += len(set(expected) - set(heard))
        duplicated += len(heard) - len(set(heard))
        if not expected:
            unfinished.append(run_id)

    def q(values, p):
        return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else float("nan")

    figures = {
        "sockets": len(sockets),
        "opened": len(opened),
        "open_all_s": round(result["opened_s"], 2),
        "open_p50_ms": round(q(opened, 50), 1),
        "open_p99_ms": round(q(opened, 99), 1),
        "streamed_runs": len(runs),
        "token_events": len(latencies),
        "token_p50_ms": round(q(latencies, 50), 1),
        "token_p99_ms": round(q(latencies, 99), 1),
        "token_max_ms": round(max(latencies, default=float("nan")), 1),
        "dropped_sockets": len(dropped),
        "events_logged": events,
        "events_lost": lost,
        "events_duplicated": duplicated,
        "runs_without_events": len(unfinished),
        "keepalives": sum(s.keepalives for s in sockets),
        "daphne_cpu_s": round(cpu, 1),
        "daphne_rss_mb": round(rss),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "tokens_per_answer": args.tokens,
        "token_ms": args.token_ms,
    }
    print(
        f"{figures['sockets']} websockets ({figures['opened']} opened in "
        f"{figures['open_all_s']} s; p50 {figures['open_p50_ms']} ms, p99 "
        f"{figures['open_p99_ms']} ms to subscribed), {figures['streamed_runs']} answers of "
        f"{args.tokens} tokens streamed into them over {args.seconds:g} s, {os.cpu_count()} CPUs"
    )
    print(
        f"token delivery (Redis log -> client): p50 {figures['token_p50_ms']} ms, p99 "
        f"{figures['token_p99_ms']} ms, max {figures['token_max_ms']} ms over "
        f"{figures['token_events']} tokens"
    )
    print(
        f"dropped sockets {figures['dropped_sockets']}; events lost {lost}, duplicated "
        f"{duplicated} of {events} logged; runs that logged nothing {len(unfinished)}"
    )
    print(f"daphne: {figures['daphne_cpu_s']} CPU s, {figures['daphne_rss_mb']} MB resident")
    for sock in dropped[:5]:
        print(f"  socket {sock.number}: {sock.closed}")
    heard = sorted((t, x) for s in sockets for t, x in zip(s.heard_at, s.latencies, strict=True))
    if heard:
        first = heard[0][0]
        buckets: dict[int, list[float]] = defaultdict(list)
        for t, x in heard:
            buckets[int((t - first) / 5000)].append(x)
        print("token delivery by 5 s from the first token: p50 / p99 ms (tokens)")
        for bucket, values in sorted(buckets.items()):
            p50, p99 = q(values, 50), q(values, 99)
            print(f"  {bucket * 5:>4} s: {p50:8.1f} / {p99:8.1f} ({len(values)})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
