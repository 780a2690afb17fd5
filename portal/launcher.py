"""The `up` launcher: embedded servers when needed, migrations, the demo seed, then daphne, a
Celery worker and Celery beat, supervised until Ctrl-C or SIGTERM.

Order matters for "nothing half-started": everything that can be checked without starting a
process (the port, the var/ lock, external PostgreSQL and Redis) is checked first; after that any
failure stops what was started, in reverse order. Each child leads its own session, so a
terminal's Ctrl-C reaches only the launcher, which stops the web and worker processes first and
the data servers last. Every child also dies with the launcher if the launcher is killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from portal import embedded
from portal.services import demo_logins_path, demo_logins_read, demo_workspace_seed

STOP_TIMEOUT = 20
READY_TIMEOUT = 60


class LaunchError(Exception):
    """Warden cannot start; the message is one line saying what is wrong and what to do."""


class _Stop(BaseException):
    """A stop signal arrived; raised from the signal handler to unwind whatever is running."""


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


def run(plan: Plan, *, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Start Warden as planned and supervise it; returns the process exit status."""
    running = _Running()
    say = _printer(out)
    with _stop_signals():
        try:
            with _var_lock(plan):
                try:
                    _start(plan, running, say)
                    return _supervise(running, say)
                finally:
                    with _signals_ignored():
                        _stop_all(running, say)
        except LaunchError as exc:
            print(f"warden: error: {exc}", file=err, flush=True)
            return 1
        except _Stop:
            say("stopped")
            return 0


def _printer(out: IO[str]) -> Callable[[str], None]:
    def say(line: str) -> None:
        # The terminal may be gone (a closed pipe, a killed `tee`); stopping must still finish.
        with contextlib.suppress(OSError, ValueError):
            print(f"warden: {line}", file=out, flush=True)

    return say


def _start(plan: Plan, running: _Running, say: Callable[[str], None]) -> None:
    if plan.web:
        _check_port_free(plan.host, plan.port)
    if not settings.EMBEDDED_REDIS:
        _check_redis()
    if not settings.EMBEDDED_DATABASE:
        _check_database()

    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)  # beat's schedule lives there in any mode
    if settings.EMBEDDED_DATABASE:
        postgres = embedded.EmbeddedPostgres(settings.EMBEDDED)
        running.servers.append(postgres)
        _start_server(postgres, settings.EMBEDDED.pg_data, say)
        _check_database()
    if settings.EMBEDDED_REDIS:
        redis_server = embedded.EmbeddedRedis(settings.EMBEDDED)
        running.servers.append(redis_server)
        _start_server(redis_server, settings.EMBEDDED.redis_dir, say)

    if plan.migrate:
        _migrate(say)
    if plan.web:
        _collectstatic()
    if settings.EMBEDDED_DATABASE and not demo_logins_path().exists():
        demo_workspace_seed(credentials_path=demo_logins_path())
        say(f"seeded the demo workspace; its logins are kept in {demo_logins_path()}")
    from django.db import connections

    connections.close_all()

    for name, argv in _commands(plan):
        running.children[name] = embedded.spawn(
            argv, death_signal=signal.SIGTERM, cwd=settings.BASE_DIR
        )
    if plan.web:
        _wait_for_web(plan, running)
    _banner(plan, say)


def _start_server(server, where: Path, say: Callable[[str], None]) -> None:
    try:
        server.start()
    except embedded.EmbeddedError as exc:
        raise LaunchError(str(exc)) from None
    for note in server.notes:
        say(note)
    say(f"{server.name} is running with its data in {where}")


def _commands(plan: Plan) -> Iterator[tuple[str, list[str]]]:
    python = sys.executable
    if plan.web:
        web = [python, "-m", "daphne", "-b", plan.host, "-p", str(plan.port)]
        if settings.BEHIND_PROXY:
            web.append("--proxy-headers")
        yield "web", [*web, "portal.asgi:application"]
    if plan.worker:
        worker = [
            python,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--loglevel",
            "INFO",
            "--hostname",
            f"warden-{os.getpid()}@%h",
        ]
        if plan.concurrency:
            worker += ["--concurrency", str(plan.concurrency)]
        yield "worker", worker
    if plan.beat:
        yield (
            "beat",
            [
                python,
                "-m",
                "celery",
                "-A",
                "portal",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                settings.CELERY_BEAT_SCHEDULE_FILENAME,
                "--pidfile=",
            ],
        )


def _supervise(running: _Running, say: Callable[[str], None]) -> int:
    watched: dict[str, Popen] = dict(running.children)
    for server in running.servers:
        if server.process is not None:
            watched[server.name] = server.process
    while True:
        for name, process in watched.items():
            status = process.poll()
            if status is not None:
                say(f"{name} exited with status {status}; stopping Warden")
                return 1
        time.sleep(0.5)


def _stop_all(running: _Running, say: Callable[[str], None]) -> None:
    if running.children:
        say("stopping " + ", ".join(running.children))
        embedded.terminate(list(running.children.values()), signal.SIGTERM, STOP_TIMEOUT)
        running.children.clear()
    for server in reversed(running.servers):
        server.stop()
    running.servers.clear()


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The same option daphne (Twisted) sets, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except PermissionError:
            raise LaunchError(
                f"no permission to listen on port {port}: use a port above 1023 (PORT=8000)"
            ) from None
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE
                raise LaunchError(
                    f"port {port} on {host} is already in use: stop the program using it, or "
                    f"choose another port (PORT={port + 1} make run)"
                ) from None
            raise LaunchError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _check_redis() -> None:
    from portal.health import ProbeFailed, check_redis

    try:
        check_redis()
    except ProbeFailed as exc:
        raise LaunchError(
            f"cannot reach Redis at {_redact(settings.REDIS_URL)} ({exc.__cause__}): check "
            "REDIS_URL and that the server is running"
        ) from None


def _check_database() -> None:
    """The database answers and has pgvector, or Warden may create it (tried, then rolled back)."""
    from django.db import DatabaseError, connection, transaction

    db = settings.DATABASES["default"]
    where = f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db['NAME']}"
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LaunchError(
            f"cannot connect to PostgreSQL at {where} ({reason}): check DATABASE_URL and that "
            "the server is running"
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
    from django.db import DatabaseError, connection

    # Several launchers may start at once against one database; the advisory lock lets one of
    # them migrate while the others wait, then find nothing left to do.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtext('warden.migrate'))")
        try:
            call_command("migrate", interactive=False, verbosity=0)
        except DatabaseError as exc:
            raise LaunchError(f"migrating the database failed ({exc}): see the log above") from None
        finally:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('warden.migrate'))")
    say("database schema is up to date")


def _collectstatic() -> None:
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)


def _wait_for_web(plan: Plan, running: _Running) -> None:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(plan.host, plan.host)  # noqa: S104
    url = f"http://{_url_host(host)}:{plan.port}/healthz"
    deadline = time.monotonic() + READY_TIMEOUT
    web = running.children["web"]
    while True:
        if web.poll() is not None:
            raise LaunchError(f"the web server exited with status {web.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise LaunchError(f"the web server did not answer {url} within {READY_TIMEOUT} s")
        time.sleep(0.2)


def _banner(plan: Plan, say: Callable[[str], None]) -> None:
    if plan.web:
        host = "127.0.0.1" if plan.host in ("0.0.0.0", "::") else plan.host  # noqa: S104
        say(f"Warden is running at http://{_url_host(host)}:{plan.port}/")
    started = [name for name in ("web", "worker", "beat") if getattr(plan, name)]
    say("processes: " + ", ".join(started))
    logins = demo_logins_read(credentials_path=demo_logins_path())
    if settings.EMBEDDED_DATABASE and logins:
        say(f"demo logins (kept in {demo_logins_path()}):")
        for login in logins:
            secret = login.password or "(no password: API tokens only)"
            say(f"  {login.username:<12} {secret:<24} {login.role}")
    say("press Ctrl-C to stop")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _var_lock(plan: Plan) -> Iterator[None]:
    """One launcher per var/ directory while any embedded server lives there."""
    if not (settings.EMBEDDED_DATABASE or settings.EMBEDDED_REDIS):
        yield
        return
    var_dir: Path = settings.VAR_DIR
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / "warden.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    def stop(signum, frame):
        raise _Stop

    previous = {
        sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Shutdown runs to the end (it is bounded by timeouts); a second Ctrl-C does not cut it."""
    previous = {
        sig: signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
