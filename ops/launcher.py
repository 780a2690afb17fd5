"""The `up` launcher: embedded servers when needed, migrations, the demo seed, then daphne, a
Celery worker and Celery beat, supervised until Ctrl-C or SIGTERM.

Supervision restarts a process that exits (the data servers included: the others stay up and
reconnect), after a pause that doubles from RESTART_DELAY to RESTART_DELAY_MAX and starts afresh
once the process has stayed up STABLE_AFTER seconds; a process that exits GIVE_UP_EXITS times
within GIVE_UP_WINDOW seconds is broken, not unlucky, and the launcher stops everything and
exits non-zero.

Order matters for "nothing half-started": everything that can be checked without starting a
process (the web port, which stays bound from then on and is handed to daphne; the var/ lock;
external PostgreSQL and Redis) is checked first; after that any failure stops what was started,
in reverse order. Each child leads its own session, so a terminal's Ctrl-C reaches only the
launcher, which stops the web and worker processes first and the data servers last. Every child
also dies with the launcher if the launcher is killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import IO
from urllib.parse import urlsplit

from django.conf import settings

from ops import embedded
from ops.demo import demo_logins_path, demo_logins_read, demo_workspace_seed

STOP_TIMEOUT = 20
READY_TIMEOUT = 60
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 30.0
GIVE_UP_EXITS = 5
GIVE_UP_WINDOW = 60.0
_POLL_INTERVAL = 0.2
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class LaunchError(Exception):
    """Warden cannot start; the message is one line saying what is wrong and what to do."""


class _Stop(BaseException):
    """A stop signal arrived; raised (outside critical sections) to unwind the start."""


@dataclass
class Plan:
    web: bool = True
    worker: bool = True
    beat: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    concurrency: int | None = None
    migrate: bool = True


@dataclass
class _Running:
    servers: list[embedded.EmbeddedPostgres | embedded.EmbeddedRedis] = field(default_factory=list)
    children: dict[str, Popen] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], tuple[int, ...]]] = field(default_factory=dict)
    web_socket: socket.socket | None = None
    seeded: bool = False


@dataclass
class _Restarts:
    """One supervised process's recent exits and its pause before the next start."""

    started: float = field(default_factory=time.monotonic)
    exits: deque[float] = field(default_factory=deque)
    delay: float = RESTART_DELAY
    due: float | None = None  # when to start it again; None while it runs


class _Signals:
    """Stop signals become a request; the request unwinds the start by raising _Stop, except
    inside `deferred()` sections (spawning a child and recording it, starting a server), where
    it waits for the section's end, and after `disarm()`, when shutdown is under way."""

    def __init__(self) -> None:
        self.requested = False
        self.armed = True
        self.depth = 0

    def install(self) -> None:
        for sig in _STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGHUP under nohup
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if self.armed and not self.depth:
            raise _Stop

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.requested and self.armed and not self.depth:
            raise _Stop

    def disarm(self) -> None:
        self.armed = False


def run(plan: Plan, *, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Start Warden as planned and supervise it; returns the process exit status."""
    os.umask(0o077)  # everything under var/ (logs, schedules, keys) is private to this user
    signals = _Signals()
    signals.install()
    running = _Running()
    say = _printer(out)
    try:
        with _var_lock(plan):
            try:
                _start(plan, running, say, signals)
                return _supervise(running, say, signals)
            finally:
                while True:  # a signal racing the first line is caught and cleanup rerun
                    try:
                        signals.disarm()
                        _stop_all(running, say)
                        break
                    except _Stop:
                        continue
    except LaunchError as exc:
        _print(err, f"warden: error: {exc}")
        return 1
    except _Stop:
        say("stopped")
        return 0
    except Exception as exc:
        log = settings.VAR_DIR / "log" / "launcher-error.log"
        with contextlib.suppress(OSError):
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
        _print(err, f"warden: error: unexpected {type(exc).__name__} while starting: see {log}")
        return 1


def _print(stream: IO[str], line: str) -> None:
    # The terminal may be gone (a closed pipe, a killed `tee`); stopping must still finish.
    with contextlib.suppress(OSError, ValueError):
        print(line, file=stream, flush=True)


def _printer(out: IO[str]) -> Callable[[str], None]:
    return lambda line: _print(out, f"warden: {line}")


def _start(plan: Plan, running: _Running, say: Callable[[str], None], signals: _Signals) -> None:
    if plan.web:
        running.web_socket = _bind_web_socket(plan.host, plan.port)
    if not settings.EMBEDDED_REDIS:
        _check_redis()
    if not settings.EMBEDDED_DATABASE:
        _check_database()

    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)  # beat's schedule lives there in any mode
    _metrics_directory()
    if settings.EMBEDDED_DATABASE:
        _start_server(embedded.EmbeddedPostgres(settings.EMBEDDED), running, say, signals)
        _check_database()
    if settings.EMBEDDED_REDIS:
        _start_server(embedded.EmbeddedRedis(settings.EMBEDDED), running, say, signals)

    if plan.migrate:
        _migrate(say)
    if plan.web:
        _collectstatic()
    if settings.EMBEDDED_DATABASE and not demo_logins_path().exists():
        demo_workspace_seed(credentials_path=demo_logins_path())
        running.seeded = True
    from django.db import connections

    connections.close_all()

    for name, argv, fds in _commands(plan, running):
        running.commands[name] = (argv, fds)
        with signals.deferred():
            running.children[name] = _spawn_child(argv, fds)
    # The launcher keeps its copy of the listening socket (it never accepts on it): a restarted
    # daphne adopts the same socket, and connections made while none runs wait in its backlog.
    if plan.web:
        _wait_for_web(plan, running)
    if plan.worker:
        _wait_for_worker(running, say)
    _banner(plan, running, say)


def _metrics_directory() -> None:
    """Where every process Warden starts counts its metrics (telemetry.metrics), for /metrics to
    add up: under var/, emptied at each start (what dead processes counted is history), unless
    PROMETHEUS_MULTIPROC_DIR names one already (its owner empties it)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = settings.VAR_DIR / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # the children's environment


def _metrics_of_dead(pid: int) -> None:
    """A dead web process's live gauges (open websockets) leave the sum."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _spawn_child(argv: list[str], fds: tuple[int, ...]) -> Popen:
    return embedded.spawn(argv, death_signal=signal.SIGTERM, cwd=settings.BASE_DIR, pass_fds=fds)


def _start_server(server, running: _Running, say: Callable[[str], None], signals: _Signals) -> None:
    running.servers.append(server)
    try:
        with signals.deferred():
            server.start()
    except embedded.EmbeddedError as exc:
        raise LaunchError(str(exc)) from None
    for note in server.notes:
        say(note)
    where = server.paths.pg_data if server.name == "PostgreSQL" else server.paths.redis_dir
    say(f"{server.name} is running with its data in {where}")


def _commands(plan: Plan, running: _Running) -> Iterator[tuple[str, list[str], tuple[int, ...]]]:
    python = sys.executable
    if plan.web and running.web_socket is not None:
        web = [python, "-m", "daphne"]
        if running.web_socket.family == socket.AF_INET:
            fd = running.web_socket.fileno()
            web += ["--fd", str(fd)]  # daphne adopts the socket we bound: no window to lose it
        else:
            # Daphne's fd endpoint only knows IPv4: release the port just before it binds.
            running.web_socket.close()
            web += ["-b", plan.host, "-p", str(plan.port)]
            fd = None
        if settings.BEHIND_PROXY:
            web.append("--proxy-headers")
        yield "web", [*web, "config.asgi:application"], (fd,) if fd is not None else ()
    if plan.worker:
        worker = [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO"]
        worker += ["--hostname", f"warden-{os.getpid()}@%h"]
        if plan.concurrency:
            worker += ["--concurrency", str(plan.concurrency)]
        yield "worker", worker, ()
    if plan.beat:
        beat = [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"]
        beat += ["--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME, "--pidfile="]
        yield "beat", beat, ()


def _supervise(running: _Running, say: Callable[[str], None], signals: _Signals) -> int:
    """Restart what exits, with a growing pause; give up on a process that keeps exiting."""
    restarts = {name: _Restarts() for name in _watched(running)}
    while True:
        for name, process in _watched(running).items():
            state = restarts[name]
            now = time.monotonic()  # a server's restart above may have taken seconds
            if state.due is None:
                if process is None:  # a server whose restart failed before it spawned
                    status = None
                elif process.poll() is None:
                    continue
                else:
                    status = process.returncode
                    if _reap_group(process) and name == "worker":
                        _resume_runs_of(process.pid, say)
                    if name == "web":  # its open websockets count no more (a live gauge)
                        _metrics_of_dead(process.pid)
                if now - state.started >= STABLE_AFTER:
                    state.delay = RESTART_DELAY
                state.exits.append(now)
                while state.exits and now - state.exits[0] > GIVE_UP_WINDOW:
                    state.exits.popleft()
                if len(state.exits) >= GIVE_UP_EXITS:
                    say(
                        f"{name} exited {len(state.exits)} times within {GIVE_UP_WINDOW:.0f} s "
                        f"(last: {_describe_exit(status)}); giving up: stopping Warden"
                    )
                    return 1
                say(f"{name} exited ({_describe_exit(status)}), restarting in {state.delay:.0f} s")
                state.due = now + state.delay
                state.delay = min(state.delay * 2, RESTART_DELAY_MAX)
            elif now >= state.due:
                state.due = None
                state.started = now
                try:
                    with signals.deferred():
                        pid = _restart(name, running, say)
                except embedded.EmbeddedError as exc:
                    say(f"{name} did not start again: {exc}")
                    continue  # its process is gone: the next round counts the exit
                say(f"{name} restarted (pid {pid})")
        time.sleep(_POLL_INTERVAL)


def _watched(running: _Running) -> dict[str, Popen | None]:
    watched: dict[str, Popen | None] = {server.name: server.process for server in running.servers}
    watched.update(running.children)
    return watched


def _restart(name: str, running: _Running, say: Callable[[str], None]) -> int:
    for server in running.servers:
        if server.name == name:
            server.process = None  # reaped already; start() records the new one
            server.notes.clear()
            try:
                server.start()  # PostgreSQL replays its WAL, Redis its append-only file
            finally:
                for note in server.notes:
                    say(note)
            return server.process.pid  # type: ignore[attr-defined]  # start() set it or raised
    argv, fds = running.commands[name]
    running.children[name] = _spawn_child(argv, fds)
    return running.children[name].pid


def _reap_group(process: Popen) -> bool:
    """Kill what the exited process left in its process group (Celery pool processes, orphaned
    PostgreSQL backends that still hold its shared memory) and wait for them to go, so that the
    restarted one starts clean; whether they went. Done right after reaping the leader: a group
    id is not reused while any member lives."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _group_alive(process.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _resume_runs_of(group: int, say: Callable[[str], None]) -> None:
    """Hand the runs a dead worker held to the live workers now, not when their leases lapse.
    Its whole process group is gone, so nothing of it can still write; if the database or the
    broker is away too, the `run-resume` job finds the runs once their leases expire."""
    from django.db import connection

    from agents.services import runs_release_worker
    from config.celery import app

    try:
        run_ids = runs_release_worker(host=socket.gethostname(), group=group)
        for run_id in run_ids:
            app.send_task(  # a broker that is away too does not hold up supervision long
                "agents.tasks.run_execute_task",
                args=[run_id],
                retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
            )
    except Exception as exc:  # supervision goes on whatever this meets
        say(f"the worker's runs are left to the resume job ({_first_line(exc)})")
        return
    finally:
        connection.close()  # the launcher holds no connection between restarts
    if run_ids:
        say(f"runs {', '.join(map(str, run_ids))} of the exited worker handed on")


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (a zombie waiting for whoever adopted it,
    perhaps a PID 1 that reaps lazily or never, holds nothing)."""
    import psutil

    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "not started"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-status).name}"
        return f"signal {-status}"
    return f"status {status}"


def _stop_all(running: _Running, say: Callable[[str], None]) -> None:
    """Idempotent: each step forgets what it stopped, so a rerun continues where it was cut."""
    if running.web_socket is not None:
        running.web_socket.close()
        running.web_socket = None
    if running.children:
        say("stopping " + ", ".join(running.children))
        embedded.terminate(list(running.children.values()), signal.SIGTERM, STOP_TIMEOUT)
        running.children.clear()
    while running.servers:
        running.servers[-1].stop()
        running.servers.pop()


def _bind_web_socket(host: str, port: int) -> socket.socket:
    """Bind and listen now, so nothing can take the port before daphne adopts the socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(128)
    except PermissionError:
        listener.close()
        raise LaunchError(
            f"no permission to listen on port {port}: use a port above 1023 (PORT=8000)"
        ) from None
    except OSError as exc:
        listener.close()
        if exc.errno == 98:  # EADDRINUSE
            raise LaunchError(
                f"port {port} on {host} is already in use: stop the program using it, or "
                f"choose another port (PORT={port + 1} make run)"
            ) from None
        raise LaunchError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    listener.set_inheritable(True)
    return listener


def _check_redis() -> None:
    from ops.health import ProbeFailed, check_redis

    try:
        check_redis()
    except ProbeFailed as exc:
        raise LaunchError(
            f"cannot reach Redis at {_describe_redis(settings.REDIS_URL)} ({exc.__cause__}): "
            "check REDIS_URL and that the server is running"
        ) from None


def _check_database() -> None:
    """The database answers and has pgvector, or Warden may create it (tried, then rolled back)."""
    from django.db import DatabaseError, connection, transaction

    db = settings.DATABASES["default"]
    where = f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db['NAME']}"
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        raise LaunchError(
            f"cannot connect to PostgreSQL at {where} ({_first_line(exc)}): check DATABASE_URL "
            "and that the server is running"
        ) from None
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        if cursor.fetchone():
            return
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        if cursor.fetchone() is None:
            raise LaunchError(
                f"the PostgreSQL server at {where} does not have the pgvector extension: install "
                "pgvector 0.8 or newer on it, then start Warden again"
            )
        try:
            with transaction.atomic():
                cursor.execute("CREATE EXTENSION vector")
                transaction.set_rollback(True)
        except DatabaseError:
            raise LaunchError(
                f"database role {db.get('USER')!r} may not create the pgvector extension in "
                f"{where}: ask a superuser to run `CREATE EXTENSION vector;` in that database, "
                "then start Warden again"
            ) from None


def _migrate(say: Callable[[str], None]) -> None:
    from django.core.management import call_command
    from django.db import connection

    # Several launchers may start at once against one database; the advisory lock lets one of
    # them migrate while the others wait, then find nothing left to do.
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtext('warden.migrate'))")
            try:
                call_command("migrate", interactive=False, verbosity=0)
            finally:
                cursor.execute("SELECT pg_advisory_unlock(hashtext('warden.migrate'))")
    except Exception as exc:
        raise LaunchError(f"migrating the database failed: {_first_line(exc)}") from None
    say("database schema is up to date")


def _collectstatic() -> None:
    """Collect static files, one launcher at a time per STATIC_ROOT."""
    from django.core.management import call_command

    root = Path(settings.STATIC_ROOT)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            call_command("collectstatic", interactive=False, verbosity=0)
        except Exception as exc:
            raise LaunchError(f"collecting static files failed: {_first_line(exc)}") from None


def _wait_for_web(plan: Plan, running: _Running) -> None:
    url = f"http://{_url_host(_loopback(plan.host))}:{plan.port}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + READY_TIMEOUT
    web = running.children["web"]
    while True:
        if web.poll() is not None:
            raise LaunchError(f"the web server exited with status {web.returncode} while starting")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise LaunchError(f"the web server did not answer {url} within {READY_TIMEOUT} s")
        time.sleep(0.2)


def _wait_for_worker(running: _Running, say: Callable[[str], None]) -> None:
    """Ready means ready: the worker answers a ping only after it has loaded its models
    (agents.warm, at its boot), so the first question waits for nothing."""
    from config.celery import app

    started = time.monotonic()
    name = f"warden-{os.getpid()}@{socket.gethostname()}"
    worker = running.children["worker"]
    while True:
        if worker.poll() is not None:
            raise LaunchError(f"the worker exited with status {worker.returncode} while starting")
        try:
            answered = app.control.ping(destination=[name], timeout=0.5)
        except Exception:  # the broker went away while we asked: the deadline decides
            answered = []
        if answered:
            break
        if time.monotonic() - started > READY_TIMEOUT:
            raise LaunchError(f"the worker did not answer within {READY_TIMEOUT} s")
        time.sleep(0.2)  # a ping that failed at once (the broker away) is not asked again at once
    say("worker ready (its models loaded)")


def _banner(plan: Plan, running: _Running, say: Callable[[str], None]) -> None:
    if plan.web:
        say(f"Warden is running at http://{_url_host(_loopback(plan.host))}:{plan.port}/")
    started = [name for name in ("web", "worker", "beat") if getattr(plan, name)]
    say("processes: " + ", ".join(started))
    watched = _watched(running).items()
    pids = ", ".join(f"{name} {process.pid}" for name, process in watched if process)
    say(f"process ids: {pids}")
    if settings.EMBEDDED_DATABASE:
        path = demo_logins_path()
        logins = demo_logins_read(credentials_path=path)
        if running.seeded:  # passwords appear once, at the first start; the file keeps them
            say(f"demo logins (kept in {path}):")
            for login in logins:
                secret = login.password or "(no password: API tokens only)"
                say(f"  {login.username:<12} {secret:<24} {login.role}")
        elif logins:
            names = ", ".join(login.username for login in logins)
            say(f"demo users: {names}; their passwords are in {path}")
    say("press Ctrl-C to stop")


def _loopback(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _describe_redis(url: str) -> str:
    """The server's address without any credential (user info or query)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _var_lock(plan: Plan) -> Iterator[None]:
    """One launcher per var/ directory while any embedded server lives there."""
    if not (settings.EMBEDDED_DATABASE or settings.EMBEDDED_REDIS):
        yield
        return
    var_dir: Path = settings.VAR_DIR
    try:
        var_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(var_dir / "warden.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LaunchError(f"cannot use the data directory {var_dir} ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LaunchError(
                f"Warden is already running with the data directory {var_dir} (PID {holder}): "
                "stop it first (Ctrl-C in its terminal), or set WARDEN_VAR_DIR to another "
                "directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
