"""Helpers for tests that run Warden's own commands as separate processes."""

from __future__ import annotations

import base64
import contextlib
import http.cookiejar
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from ops.embedded import EmbeddedPaths, EmbeddedRedis, die_with_parent

ROOT = Path(__file__).resolve().parent.parent
ASGI = "config.asgi:application"


def wait_until_alone_on_the_database(timeout: float = 30) -> None:
    """Wait (up to `timeout`) until no other connection is on the test database: the servers a
    test started have ended, but PostgreSQL may take a moment to see their connections go, and
    the database can be dropped or emptied only then."""
    from django.db import connection

    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.1)


def production_env(**extra: str) -> dict[str, str]:
    """A complete production environment (external database), minus whatever `extra` blanks."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "WARDEN_VAR_DIR", "PORT", "DEBUG"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL="postgresql://warden:secret@db.internal:5432/warden",
        REDIS_URL="redis://redis.internal:6379/0",
        SECRET_KEY=secrets.token_urlsafe(50),
        WARDEN_ENCRYPTION_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        ALLOWED_HOSTS="warden.example.com",
    )
    env.update(extra)
    return {key: value for key, value in env.items() if value != ""}


def embedded_env(var_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "SECRET_KEY",
            "WARDEN_ENCRYPTION_KEY",
            "ALLOWED_HOSTS",
            "WARDEN_TEST_VAR_DIR",
            "WARDEN_TEST_VAR_OWNER",
        }
    }
    env.update(DJANGO_SETTINGS_MODULE="config.settings", WARDEN_VAR_DIR=str(var_dir))
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BANNER_END = "warden: press Ctrl-C to stop"  # the last line every launcher prints once started


class Up:
    """`manage.py up` running in the background, its output collected in a file."""

    def __init__(self, *args: str, env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "up", *args],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # never outlives the test run
        )
        # Processes, not pids: a pid is reused within minutes here (pid_max 32768, and every
        # database connection forks a backend), and a kill by a remembered pid once took down
        # an xdist worker. psutil checks a process's start time before it signals or reports.
        self.tree: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}

    def output(self) -> str:
        return self.log.read_text()

    def remember_tree(self) -> list[psutil.Process]:
        """Record every process under the launcher, to check later that none survived."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    name = _program(child.cmdline())
                    if self.tree.get(child.pid) != child:  # new, or a reused pid
                        self.tree[child.pid] = child
                        self.names[child.pid] = name
        return list(self.tree.values())

    def kill_remembered(self) -> None:
        """SIGKILL what is left of the recorded tree (each the process recorded, never another
        that has its pid since)."""
        for process in self.tree.values():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if process.status() != psutil.STATUS_ZOMBIE:
                    process.kill()

    def tree_report(self) -> str:
        """Each process under the launcher now: what it is, its state and the CPU it has had
        (a start that stalls says which process stalled, and whether it was running)."""
        lines = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    cpu = child.cpu_times()
                    lines.append(
                        f"  {child.pid} {_program(child.cmdline())}: {child.status()}, "
                        f"{cpu.user + cpu.system:.1f} s CPU, {child.num_threads()} threads"
                    )
        return "\n".join(lines) or "  none"

    def tree_names(self) -> set[str]:
        """What ran under the launcher: program names, and celery's subcommand."""
        return set(self.names.values())

    def wait_ready(self, url: str, timeout: float = 180) -> dict:
        """`url` (a /readyz) answers 200 and the launcher has printed its banner: /readyz is
        ready as soon as the worker answers a ping, a moment before the launcher's own ping
        does and it prints the banner (with the demo passwords, at a first start)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"up exited with {self.process.returncode}:\n{self.output()}")
            status, body = http_get(url)
            if status == 200 and BANNER_END in self.output():
                self.remember_tree()
                return json.loads(body)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not ready within {timeout} s ({status} {body}):\n{self.output()}\n"
                    f"processes under the launcher:\n{self.tree_report()}"
                )
            time.sleep(0.25)

    def stop(self, sig: int, timeout: float = 60) -> int:
        self.remember_tree()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        """SIGKILL the launcher: it gets no chance to stop its children."""
        self.remember_tree()
        self.process.kill()
        self.process.wait(10)
        self._out.close()

    def survivors(self, grace: float = 30) -> list[str]:
        """Processes of the recorded tree still running after `grace` seconds (zombies are gone)."""
        deadline = time.monotonic() + grace
        while True:
            alive = []
            for pid, process in self.tree.items():
                try:
                    if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{pid} {' '.join(process.cmdline())}")
                except psutil.NoSuchProcess:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


def _program(cmd: list[str]) -> str:
    if "celery" in cmd and "config" in cmd:
        return "celery " + cmd[cmd.index("config") + 1]
    if "daphne" in cmd:
        return "daphne"
    # Servers rewrite their titles ("redis-server unixsocket:...", "postgres: checkpointer").
    return Path(cmd[0].split()[0]).name if cmd and cmd[0] else "?"


# Ports for servers the tests start come from below the kernel's ephemeral range (32768 and
# up on Linux), where no outgoing connection takes one between the probe and the server's bind,
# and each xdist worker has a block of its own, so two workers never hand out the same port.
_PORT_BASE, _PORT_BLOCK, _PORT_BLOCKS = 12000, 640, 32
_ports: list[int] = []


def redis_of_its_own() -> EmbeddedRedis:
    """An embedded Redis in a new temporary directory, not started yet (the caller starts and
    stops it: an outage the test controls)."""
    return EmbeddedRedis(EmbeddedPaths(Path(tempfile.mkdtemp(prefix="wr-"))))


def free_port() -> int:
    """A loopback port nothing listens on now (probed), new to this process."""
    if not _ports:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        block = int(worker) % _PORT_BLOCKS if worker.isdigit() else 0
        first = _PORT_BASE + block * _PORT_BLOCK
        # A random start: two test sessions on one machine rarely walk the same ports.
        start = secrets.randbelow(_PORT_BLOCK)
        _ports.extend(first + (start + n) % _PORT_BLOCK for n in range(_PORT_BLOCK))
    while _ports:
        port = _ports.pop(0)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("every test port of this worker is taken")


def http_get(url: str, timeout: float = 30) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


@contextlib.contextmanager
def daphne_on_test_database(port: int, *, started: list | None = None, **env: str):
    """daphne serving Warden on 127.0.0.1:`port` with the test database (the caller's test
    must commit its writes: `committing_db`); yields its URL once /healthz answers. `started`
    receives the daphne process, for a test that kills it."""
    from django.db import connection

    # Its log goes to a file: a pipe nobody reads fills up (64 KiB) and stalls the server.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "config.asgi:application",
        ],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "WARDEN_TEST_DATABASE": connection.settings_dict["NAME"],
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    if started is not None:
        started.append(web)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if web.poll() is not None:
                log.seek(0)
                raise AssertionError(log.read().decode()[-2000:])
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, "daphne did not answer within 120 s"
                time.sleep(0.2)
        yield url
    finally:
        web.terminate()
        try:
            web.wait(20)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait()
        log.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def sign_in(base: str, username: str, password: str) -> str:
    """Sign in through the real login form; return the home page's HTML."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/login/", timeout=10).read().decode()
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert found, f"no CSRF token on the sign-in page:\n{page[:2000]}"
    token = found.group(1)
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    request = urllib.request.Request(f"{base}/login/", data=form, headers={"Referer": base})
    return opener.open(request, timeout=10).read().decode()


def blas_threads_after(code: str) -> tuple[set[int], set[int]]:
    """numpy's BLAS thread counts in a new process set to two, then after `code` ran there."""
    program = (
        "import json\nimport numpy\nfrom threadpoolctl import ThreadpoolController as C\n"
        "def threads(): return {lib['num_threads'] for lib in C().select(user_api='blas').info()}\n"
        "C().limit(limits=2, user_api='blas'); before = threads()\n"
        f"{code}\n"
        "print(json.dumps([sorted(before), sorted(threads())]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    before, after = (set(x) for x in json.loads(out))
    if not before:
        pytest.skip("numpy's BLAS is not one threadpoolctl can set")
    return before, after
