"""Fault injection against a real Warden: the launcher (`manage.py up`) with its embedded
PostgreSQL and Redis, its Celery workers and daphne, driven over HTTP like an integration.

The pieces:

- `Endpoint`: the slow external system an HTTP tool calls. It counts every request per
  `Idempotency-Key` and deduplicates like a careful receiver: a key seen before whose request
  finished (answered, or abandoned by a client that went away) is replayed, not acted on again;
  a second request arriving while the first one's client is still waiting for it is a
  *duplicate effect* (two workers executing one call at once).
- `ModelServer`: an OpenAI-compatible model that, for every run, first asks for the tool, then
  answers once it has the tool's result. Delays and gates let a test hold a model call.
- `Warden`: one launcher under test (plus optional `up --worker-only` launchers for more
  workers), the world inside it (tests/chaos/world.py), its API, a superuser connection to its
  database for assertions, and the fault injectors.
- `trials.fault_trials` (tests/chaos/trials.py): the seeded loop of faults at random points
  of runs that both the suite and scripts/chaos.py use, and its report.

Everything asserted comes from the database and the endpoint's records, never from logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import psycopg

from tests.model_server import Reply, _chunks, _completion
from tests.processes import ROOT, Up, embedded_env, free_port, production_env

FINAL = ("succeeded", "failed", "cancelled", "rejected")
TOOL = "chaos_effect"


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, step: float = 0.05):
    """Poll `condition` until it returns something truthy; raise AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


# --- the external system ---------------------------------------------------------------------


@dataclass
class Delivery:
    """One request the endpoint received."""

    key: str
    note: str
    arrived: float
    outcome: str  # "effect" (acted on), "replayed" (deduplicated), "duplicate" (acted on again)
    finished: float | None = None
    client_gone: bool = False


class Endpoint:
    """A threaded HTTP server on 127.0.0.1 standing in for the system a tool changes."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.delay = 0.0  # default seconds before answering (a call's `delay` argument wins)
        self.changed = threading.Condition()
        self._gate: threading.Event | None = None
        self._settled: set[str] = set()  # keys whose request finished or was abandoned
        self._live: dict[str, int] = {}  # key -> requests being processed with a client waiting
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                endpoint._serve(self, self.headers.get("Idempotency-Key", ""), body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/effect"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _serve(self, handler: BaseHTTPRequestHandler, key: str, body: dict) -> None:
        with self.changed:
            if key and key in self._settled:
                outcome = "replayed"
            elif key and self._live.get(key):
                outcome = "duplicate"
            else:
                outcome = "effect"
            delivery = Delivery(key, str(body.get("note", "")), time.monotonic(), outcome)
            self.deliveries.append(delivery)
            self._live[key] = self._live.get(key, 0) + 1
            gate = self._gate
            self.changed.notify_all()
        delay = float(body.get("delay") or self.delay) if outcome != "replayed" else 0.0
        gone = settled = False
        if gate is not None and outcome != "replayed":
            gone = _wait_unless_gone(handler.connection, gate.wait)
        if not gone:
            gone = _wait_unless_gone(handler.connection, lambda t: False, seconds=delay)
        if not gone:
            number = sum(1 for d in self.deliveries if d.key == key and d.outcome != "replayed")
            payload = json.dumps(
                {"key": key, "effects": number, "replayed": outcome == "replayed"}
            ).encode()
            with self.changed:  # done before the answer leaves: a quick retry is a replay
                self._live[key] -= 1
                self._settled.add(key)
                settled = True
                self.changed.notify_all()
            try:
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)
                handler.wfile.flush()
            except OSError:
                gone = True
        with self.changed:
            delivery.finished = time.monotonic()
            delivery.client_gone = gone
            if not settled:
                self._live[key] -= 1
                self._settled.add(key)
            self.changed.notify_all()

    @contextlib.contextmanager
    def hold(self) -> Iterator[threading.Event]:
        """Requests arriving inside the block wait (acted on, unanswered) until the yielded
        event is set, or the block ends."""
        gate = threading.Event()
        self._gate = gate
        try:
            yield gate
        finally:
            self._gate = None
            gate.set()

    def wait_delivery(self, prefix: str, *, timeout: float, count: int = 1) -> Delivery:
        """The `count`th request whose key starts with `prefix` (`run:<id>:`), once it came."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: len(self.for_prefix(prefix)) >= count, timeout=timeout
            )
            assert ok, f"no call {prefix}* reached the endpoint within {timeout:.0f} s"
            return self.for_prefix(prefix)[count - 1]

    def for_prefix(self, prefix: str) -> list[Delivery]:
        return [d for d in list(self.deliveries) if d.key.startswith(prefix)]

    def counts(self, key: str) -> tuple[int, int]:
        """(requests received, times acted on) for `key`."""
        mine = [d for d in list(self.deliveries) if d.key == key]
        return len(mine), sum(1 for d in mine if d.outcome != "replayed")

    def duplicate_effects(self) -> dict[str, int]:
        """Keys acted on more than once (a request while another for the key was live)."""
        acted: dict[str, int] = {}
        for d in list(self.deliveries):
            if d.outcome != "replayed":
                acted[d.key] = acted.get(d.key, 0) + 1
        return {key: n for key, n in acted.items() if n > 1}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _wait_unless_gone(conn: socket.socket, wait: Callable[[float], bool], seconds=None) -> bool:
    """Wait (for `seconds`, or until `wait(slice)` says done) while watching the client's
    socket; True as soon as the client hung up (a killed worker's socket closes)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        slice_ = 0.1 if deadline is None else min(0.1, max(0.0, deadline - time.monotonic()))
        if wait(slice_ if deadline is None else 0):
            return False
        readable, _, _ = select.select([conn], [], [], slice_)
        if readable:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    return True
            except OSError:
                return True


# --- the model -------------------------------------------------------------------------------

_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


class ModelServer:
    """OpenAI-compatible chat completions at /chaos/v1: a tool call first, the final answer
    after the tool's result, for every run. A run's input may carry `delay=S` (the tool call's
    `delay` argument, how long the endpoint takes) and `model_delay=S` (each reply's delay)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str]] = []  # (arrived, phase, user text)
        self.changed = threading.Condition()
        self._gates: dict[str, threading.Event] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                reply = server._reply(body)
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for chunk in _chunks(body, reply):
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                payload = json.dumps(_completion(body, reply)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/chaos/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _reply(self, body: dict) -> Reply:
        messages = body.get("messages") or []
        text = next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")
        phase = "answer" if messages and messages[-1].get("role") == "tool" else "call"
        with self.changed:
            self.calls.append((time.monotonic(), phase, text))
            gate = self._gates.get(phase)
            self.changed.notify_all()
        if gate is not None:
            gate.wait(120)
        found = re.search(r"model_delay=" + _NUMBER, text)
        if found:
            time.sleep(float(found.group(1)))
        if phase == "answer":
            return Reply.say(f"done: {messages[-1].get('content')}")
        arguments = {"note": text[:200]}
        found = re.search(r"(?<![a-z_])delay=" + _NUMBER, text)
        if found:
            arguments["delay"] = float(found.group(1))
        return Reply.call(TOOL, arguments)

    @contextlib.contextmanager
    def hold(self, phase: str) -> Iterator[threading.Event]:
        """Model calls of `phase` ("call": the first, "answer": after the tool) wait inside
        the block until the yielded event is set."""
        gate = threading.Event()
        self._gates[phase] = gate
        try:
            yield gate
        finally:
            self._gates.pop(phase, None)
            gate.set()

    def wait_call(self, marker: str, phase: str, *, timeout: float) -> None:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(p == phase and marker in t for _, p, t in self.calls), timeout=timeout
            )
        assert ok, f"no {phase} model call for {marker!r} within {timeout:.0f} s"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- the Warden under test -------------------------------------------------------------------


def _short_var_dir() -> Path:
    # Unix socket paths live under it (EmbeddedPaths.check_socket_length): keep it short.
    return Path(tempfile.mkdtemp(prefix="wc-", dir="/tmp"))


@dataclass
class Warden:
    """`manage.py up` on a fresh data directory, and `extra_workers` more Celery workers each
    under its own `manage.py up --worker-only` against the same PostgreSQL and Redis."""

    settings: dict[str, str] = field(default_factory=dict)
    extra_workers: int = 0
    concurrency: int = 2
    var: Path = field(default_factory=_short_var_dir)
    port: int = field(default_factory=free_port)
    launchers: list[Up] = field(default_factory=list)
    world: dict = field(default_factory=dict)
    started_in: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> Up:
        return self.launchers[0]

    @property
    def env(self) -> dict[str, str]:
        return embedded_env(
            self.var,
            PORT=str(self.port),
            WARDEN_OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
            WARDEN_READY_CACHE_SECONDS="0",  # each /readyz probe sees the state of the moment
            **self.settings,
        )

    def worker_env(self, n: int) -> dict[str, str]:
        """A worker-only launcher's environment: the embedded servers, reached as external
        ones (a second launcher may not share the embedded servers' data directory)."""
        pg = urllib.parse.quote(str(self.var / "pg"), safe="")
        return production_env(
            DATABASE_URL=f"postgresql://postgres@{pg}/warden",
            REDIS_URL=f"unix://{self.var / 'redis' / 'redis.sock'}",
            SECRET_KEY=(self.var / "secret_key").read_text().strip(),
            WARDEN_ENCRYPTION_KEY=(self.var / "encryption_key").read_text().strip(),
            ALLOWED_HOSTS="127.0.0.1",
            WARDEN_VAR_DIR=str(self.var / f"w{n}"),
            WARDEN_OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
            **self.settings,
        )

    def start(self, *, model: ModelServer, endpoint: Endpoint, timeout: float = 300) -> Warden:
        began = time.monotonic()
        args = ("--concurrency", str(self.concurrency))
        self.launchers.append(Up(*args, env=self.env, log=self.var / "up.log"))
        self.up.wait_ready(f"{self.base}/readyz", timeout=timeout)
        for n in range(1, self.extra_workers + 1):
            log = self.var / f"worker{n}.log"
            self.launchers.append(Up("--worker-only", *args, env=self.worker_env(n), log=log))
        self.wait_workers(timeout=timeout)
        world = ["--model-base", model.base, "--effect-url", endpoint.url]
        made = subprocess.run(
            [sys.executable, "-m", "tests.chaos.world", *world],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr[-3000:]
        self.world = json.loads(made.stdout.strip().splitlines()[-1])
        # The demo seed queues the handbook's ingestion (embeddings, the first in each worker
        # process loads torch): the runs under test must not queue behind it.
        wait_for(
            lambda: (
                not self.query(
                    "SELECT 1 FROM agents_document WHERE status IN ('queued', 'processing')"
                )
            ),
            timeout=timeout,
            what="the demo documents' ingestion",
            step=0.5,
        )
        # The first run in each worker process imports litellm and builds its router (~10 s on
        # a busy machine, longer than a short lease): warm every pool process up first.
        warm = [self.start_run("warm-up") for _ in range(len(self.launchers) * self.concurrency)]
        rows = self.wait_final(warm, timeout=timeout)
        assert all(r["state"] in FINAL for r in rows.values()), f"warm-up runs: {rows}"
        self.started_in = time.monotonic() - began
        return self

    def stop(self) -> None:
        for launcher in reversed(self.launchers):
            with contextlib.suppress(Exception):
                launcher.stop(signal.SIGTERM, timeout=60)
            with contextlib.suppress(Exception):
                if launcher.process.poll() is None:
                    launcher.kill()
        for launcher in self.launchers:
            launcher.kill_remembered()  # children the launcher could not stop (it was killed)
        shutil.rmtree(self.var, ignore_errors=True)

    def alive(self) -> bool:
        return all(launcher.process.poll() is None for launcher in self.launchers)

    def output(self) -> str:
        """Every launcher's log so far, one after another."""
        parts = []
        for launcher in self.launchers:
            with contextlib.suppress(OSError):
                parts.append(launcher.output())
        return "\n".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for launcher in self.launchers:
            with contextlib.suppress(OSError):
                text = launcher.output().splitlines()[-lines:]
                parts.append(f"--- {launcher.log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # --- processes

    def workers(self) -> list[psutil.Process]:
        """The Celery worker main processes, one per launcher that has a live one."""
        found = []
        for launcher in self.launchers:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(launcher.process.pid).children():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        cmd = child.cmdline()
                        if "celery" in cmd and "worker" in cmd and child.status() != "zombie":
                            found.append(child)
        return found

    def wait_workers(self, *, timeout: float = 120) -> None:
        """Until every launcher has a Celery worker whose pool processes are up."""

        def ready() -> bool:
            if not self.alive():
                down = [u.log.name for u in self.launchers if u.process.poll() is not None]
                raise AssertionError(f"a launcher exited ({', '.join(down)}):\n{self.log_tail(8)}")
            workers = self.workers()
            return len(workers) == len(self.launchers) and all(
                len(w.children()) >= self.concurrency for w in workers
            )

        wait_for(ready, timeout=timeout, what="every launcher's Celery worker", step=0.2)

    def server_process(self, name: str) -> psutil.Process:
        for child in psutil.Process(self.up.process.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                cmd = child.cmdline()
                if cmd and name in Path(cmd[0].split()[0]).name:
                    return child
        raise AssertionError(f"the launcher has no {name} child")

    def kill_worker(self, worker: psutil.Process) -> list[int]:
        """SIGKILL a Celery worker and its pool (it leads its own process group)."""
        group = [worker, *worker.children(recursive=True)]
        os.killpg(worker.pid, signal.SIGKILL)
        _wait_gone(group)
        return [p.pid for p in group]

    def worker_holding(self, holder: str) -> psutil.Process | None:
        """The worker main process whose pool process holds a lease `host:pid:task`."""
        parts = holder.split(":")
        pid = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        for worker in self.workers():
            with contextlib.suppress(psutil.NoSuchProcess):
                if pid in {worker.pid, *(p.pid for p in worker.children(recursive=True))}:
                    return worker
        return None

    def kill_redis(self) -> int:
        redis = self.server_process("redis-server")
        redis.send_signal(signal.SIGKILL)
        _wait_gone([redis])
        return redis.pid

    def stop_postgres_fast(self) -> int:
        """PostgreSQL's fast shutdown (SIGINT to the postmaster), as `pg_ctl stop -m fast`."""
        postmaster = self.server_process("postgres")
        postmaster.send_signal(signal.SIGINT)
        _wait_gone([postmaster], timeout=60)
        return postmaster.pid

    # --- the database, for assertions and for terminating backends

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            f"host={self.var / 'pg'} user=postgres dbname=warden", autocommit=True
        )

    def query(self, sql: str, params=()) -> list[tuple]:
        with self.connect() as db:
            return db.execute(sql, params).fetchall()

    def terminate_backends(self, *, spare: tuple[int, ...] = ()) -> list[int]:
        """pg_terminate_backend every client connection to Warden's database but ours.

        Over the Unix socket a backend does not know its client's process, so the workers'
        connections cannot be told apart from the web's by address; at the moments the tests
        inject this (a tool or model call in flight, a checkpoint waiting) no request is being
        served, so the connections open are the workers' (they keep theirs between tasks)."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'warden' AND backend_type = "
                "'client backend' AND pid <> pg_backend_pid() AND NOT pid = ANY(%s)",
                [list(spare)],
            ).fetchall()
            pids = [pid for (pid,) in rows]
            done = [
                pid
                for pid in pids
                if db.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]
            ]
            still = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [done]
            ).fetchall()
        assert not still, f"backends {still} survived pg_terminate_backend"
        return done

    def run_row(self, run_id: int) -> dict:
        with self.connect() as db:
            row = db.execute(
                "SELECT state, fencing_token, lease_holder, error, "
                "(SELECT count(*) FROM agents_runstep s WHERE s.run_id = r.id) "
                "FROM agents_run r WHERE id = %s",
                [run_id],
            ).fetchone()
        state, token, holder, error, steps = row
        return {"state": state, "token": token, "holder": holder, "error": error, "steps": steps}

    def runs(self, run_ids: list[int]) -> dict[int, dict]:
        if not run_ids:
            return {}
        with self.connect() as db:
            rows = db.execute(
                "SELECT id, state, fencing_token, lease_holder, error, "
                "(SELECT count(*) FROM agents_runstep s WHERE s.run_id = r.id) "
                "FROM agents_run r WHERE id = ANY(%s)",
                [run_ids],
            ).fetchall()
        return {
            r[0]: {"state": r[1], "token": r[2], "holder": r[3], "error": r[4], "steps": r[5]}
            for r in rows
        }

    def wait_final(self, run_ids: list[int], *, timeout: float) -> dict[int, dict]:
        """Each run's row once all are final, or as they are at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self.runs(run_ids)
            except psycopg.OperationalError:  # PostgreSQL restarting
                rows = None
            if rows is not None and all(r["state"] in FINAL for r in rows.values()):
                return rows
            if time.monotonic() > deadline or not self.alive():  # nobody left to finish them
                return rows or {}
            time.sleep(0.2)

    def ledger(self, run_id: int) -> list[dict]:
        """The run's invocation-ledger rows; `attempts` (issue 17) only once the column exists."""
        with self.connect() as db:
            columns = {
                name
                for (name,) in db.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'tools_toolinvocation'"
                )
            }
            wanted = ["key", "status"] + [c for c in ("attempts", "fence") if c in columns]
            rows = db.execute(
                f"SELECT {', '.join(wanted)} FROM tools_toolinvocation "
                "WHERE key LIKE %s ORDER BY key",
                [f"run:{run_id}:%"],
            ).fetchall()
        return [dict(zip(wanted, row, strict=True)) for row in rows]

    def audit_actions(self, run_id: int) -> list[str]:
        rows = self.query(
            "SELECT action FROM audit_auditevent WHERE run = %s ORDER BY sequence", [str(run_id)]
        )
        return [action for (action,) in rows]

    def step_keys(self, run_id: int) -> list[str]:
        rows = self.query(
            "SELECT input->>'key' FROM agents_runstep WHERE run_id = %s AND kind = 'tool' "
            "ORDER BY index",
            [run_id],
        )
        return [key for (key,) in rows]

    # --- the API

    def start_run(self, text: str, *, tries: int = 5) -> int:
        """POST /api/v1/agents/chaos/runs as `member`, with its token; the new run's id. Like a
        careful client, it retries a 502-504 or a refused connection with the same
        Idempotency-Key (so a retry never starts a second run); anything else is a failure."""
        request = urllib.request.Request(
            f"{self.base}/api/v1/agents/{self.world['agent']}/runs",
            data=json.dumps({"input": text}).encode(),
            headers={
                "Authorization": f"Bearer {self.world['token']}",
                "Content-Type": "application/json",
                "Idempotency-Key": f"chaos-{os.urandom(8).hex()}",
            },
            method="POST",
        )
        for attempt in range(1, tries + 1):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.status in (200, 202), response.status
                    return json.loads(response.read())["id"]
            except urllib.error.HTTPError as exc:
                if exc.code not in (502, 503, 504) or attempt == tries:
                    raise AssertionError(
                        f"starting a run: {exc.code} {exc.read()[:500]!r}"
                    ) from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt == tries:
                    raise AssertionError(f"starting a run: {exc}") from None
            time.sleep(1)
        raise AssertionError("unreachable")

    def ready_again(self, *, timeout: float) -> bool:
        """Whether /readyz answers 200 within `timeout` (the last test's fault may still be
        settling: a restarted Redis, backends the pool has yet to replace)."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if self.readyz()[0] == 200:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return False

    def why_not_ready(self) -> str:
        """Which launcher exited (with its code), or what /readyz answers now, and the logs'
        last lines."""
        exited = [
            f"{launcher.log.name} exited with {launcher.process.returncode}"
            for launcher in self.launchers
            if launcher.process.poll() is not None
        ]
        status, body = self.readyz()
        return "; ".join(exited or [f"/readyz answers {status} {body}"]) + "\n" + self.log_tail(8)

    def readyz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.base}/readyz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, {}
        except (urllib.error.URLError, OSError, ValueError):
            return 0, {}


def _wait_gone(processes: list[psutil.Process], timeout: float = 30) -> None:
    """Until each of `processes` has exited (not merely until its pid is someone else's)."""

    def gone() -> bool:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    return False
        return True

    pids = [p.pid for p in processes]
    wait_for(gone, timeout=timeout, what=f"processes {pids} to exit")


class ReadyzWatch:
    """Polls /readyz in a thread and keeps (time, status, failed checks) for each answer."""

    def __init__(self, warden: Warden, period: float = 0.1, pollers: int = 3):
        self.warden = warden
        self.period = period
        self.seen: list[tuple[float, int, list[str]]] = []
        self._stop = threading.Event()
        # Several pollers: one probe can take a second (a Celery ping), and a server the
        # launcher restarts at once is down for little more than that.
        self._threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(pollers)]

    def __enter__(self) -> ReadyzWatch:
        for thread in self._threads:
            thread.start()
            time.sleep(self.period / len(self._threads))
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            status, body = self.warden.readyz()
            self.seen.append((time.monotonic(), status, list(body.get("failed") or [])))
            self._stop.wait(self.period)

    def went_down_naming(self, dependency: str) -> bool:
        return any(s == 503 and dependency in failed for _, s, failed in self.seen)

    def back_up_after_down(self) -> bool:
        down = sorted(t for t, s, _ in self.seen if s == 503)
        return bool(down) and any(s == 200 and t > down[0] for t, s, _ in self.seen)

    def summary(self) -> str:
        collapsed: list[str] = []
        for _, status, failed in sorted(self.seen):
            label = f"{status}{'(' + ','.join(failed) + ')' if failed else ''}"
            if not collapsed or collapsed[-1] != label:
                collapsed.append(label)
        return " -> ".join(collapsed)
