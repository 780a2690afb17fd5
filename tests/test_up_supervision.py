"""The launcher's supervision, driven as an outside tester would: its children are killed, stopped
or hung, and it restarts them (or gives up on one that keeps exiting).

One launcher serves the tests that share `running` (starting one costs a minute on a busy
machine): tests/scheduling.py keeps this module on one xdist worker, so it starts once, and the
check that a stop leaves nothing behind after all those restarts is made on the launcher that
had them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import redis as redis_lib

from tests.processes import Up, embedded_env, free_port, http_get, port_is_free, sign_in

# Supervision: the launcher's children are killed as an outside tester (or tests/chaos) would.


def child_pids(up: Up) -> dict[str, int]:
    """The launcher's direct children by role: PostgreSQL, Redis, web, worker, beat."""
    found = {}
    for child in psutil.Process(up.process.pid).children():
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                continue  # exited, not yet reaped by the launcher
            cmd = child.cmdline()
            if "celery" in cmd:
                found[cmd[cmd.index("config") + 1]] = child.pid  # worker, beat
            elif "daphne" in cmd:
                found["web"] = child.pid
            elif cmd and Path(cmd[0].split()[0]).name == "redis-server":
                found["Redis"] = child.pid
            elif cmd and Path(cmd[0]).name == "postgres":
                found["PostgreSQL"] = child.pid
    return found


def wait_for(condition, what: str, up: Up, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert up.process.poll() is None, f"the launcher exited:\n{up.output()[-4000:]}"
        assert time.monotonic() < deadline, f"{what} not within {timeout} s:\n{up.output()[-4000:]}"
        time.sleep(0.1)


def restarted(up: Up, name: str, old_pid: int) -> int:
    """Wait for `name` to run again under a new pid; return it."""
    pid = wait_for(
        lambda: child_pids(up).get(name) not in (None, old_pid) and child_pids(up).get(name),
        f"{name} restarted",
        up,
    )
    up.remember_tree()
    return pid


def output_after(up: Up, pattern: str) -> str:
    """The output after the last line matching `pattern` (a regular expression)."""
    matches = list(re.finditer(pattern, up.output()))
    return up.output()[matches[-1].end() :] if matches else ""


def exited_line(name: str, how: str) -> str:
    """The launcher's line for an exit (the pause grows if it exited recently)."""
    return rf"warden: {name} exited \({how}\), restarting in \d+ s\n"


@dataclasses.dataclass
class Running:
    up: Up
    base: str
    var: Path


@pytest.fixture(scope="module")
def running(request):
    """One launcher for the supervision tests (starting one costs a minute on a busy machine);
    each test leaves it ready again."""
    # Not under pytest's basetemp: as root PostgreSQL runs as another user, and every pytest
    # session started meanwhile (another suite on this machine) makes /tmp/pytest-of-root 0700
    # again, so this PostgreSQL could no longer read its own files after a while.
    tmp = Path(tempfile.mkdtemp(prefix="warden-supervised-"))
    port = free_port()
    # Beat's run-resume every second shows beat publishing and the worker consuming.
    env = embedded_env(tmp / "var", PORT=str(port), WARDEN_RUN_RESUME_SECONDS="1")
    up = Up(env=env, log=tmp / "up.log")
    base = f"http://127.0.0.1:{port}"
    failed = request.session.testsfailed
    try:
        up.wait_ready(f"{base}/readyz", timeout=180)
        yield Running(up, base, tmp / "var")
    finally:
        up.stop(signal.SIGTERM)
        if request.session.testsfailed == failed:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"the launcher's output and var/ are kept in {tmp}")


def ready_again(running: Running, killed: float) -> float:
    """Wait for /readyz to answer 200 from a check made after `killed`; the seconds since."""
    cached = killed + 2.5  # WARDEN_READY_CACHE_SECONDS: earlier answers may predate the kill
    wait_for(
        lambda: time.monotonic() > cached and http_get(f"{running.base}/readyz")[0] == 200,
        "/readyz 200",
        running.up,
        120,
    )
    seconds = time.monotonic() - killed
    print(f"ready again {seconds:.1f} s after the kill")  # shown with -s
    return seconds


def test_a_killed_worker_is_restarted_and_tasks_run_again(running):
    up = running.up
    before = child_pids(up)
    killed = time.monotonic()

    os.kill(before["worker"], signal.SIGKILL)

    pid = restarted(up, "worker", before["worker"])
    ready_again(running, killed)
    line = exited_line("worker", "signal SIGKILL")
    assert re.search(line, up.output())
    assert f"warden: worker restarted (pid {pid})\n" in up.output()
    # The new worker consumes what beat keeps sending.
    wait_for(
        lambda: re.search(r"run_resume_task\[[^]]+\] succeeded", output_after(up, line)),
        "a task run by the new worker",
        up,
    )
    after = child_pids(up)
    assert {k: v for k, v in after.items() if k != "worker"} == {
        k: v for k, v in before.items() if k != "worker"
    }  # nothing else was restarted
    assert not psutil.pid_exists(before["worker"]) or (
        psutil.Process(before["worker"]).status() == psutil.STATUS_ZOMBIE
    )


def test_a_killed_redis_is_restarted_with_its_data(running):
    up = running.up
    client = redis_lib.Redis(unix_socket_path=str(running.var / "redis" / "redis.sock"))
    client.set("written-before-the-kill", "kept")
    client.xadd("warden:test:events", {"kind": "token"})
    time.sleep(1.5)  # the premise: a write older than appendfsync everysec's second
    before = child_pids(up)
    killed = time.monotonic()

    os.kill(before["Redis"], signal.SIGKILL)

    pid = restarted(up, "Redis", before["Redis"])
    assert client.get("written-before-the-kill") == b"kept"
    assert client.xlen("warden:test:events") == 1
    ready_again(running, killed)
    line = exited_line("Redis", "signal SIGKILL")
    assert re.search(line, up.output())
    assert f"warden: Redis restarted (pid {pid})\n" in up.output()
    # Web and beat stayed up and reconnected: beat publishes, a worker consumes. (The worker
    # reconnects too, but one run in about five it exited while Redis was down, cause not
    # found; the launcher restarted it: that is what it is for.) The sweep's lines show again
    # after the worker's warning that the broker was lost (ops.logs.RoutineTasks).
    after = child_pids(up)
    assert (after["web"], after["beat"]) == (before["web"], before["beat"])
    wait_for(
        lambda: re.search(r"run_resume_task\[[^]]+\] received", output_after(up, line)),
        "a task sent by beat and received by the worker after the restart",
        up,
    )


def test_a_stopped_postgres_is_reported_by_readyz_then_restarted(running):
    up = running.up
    before = child_pids(up)
    # Supervision paused (the launcher stopped), PostgreSQL stays down long enough to be seen.
    os.kill(up.process.pid, signal.SIGSTOP)
    try:
        os.kill(before["PostgreSQL"], signal.SIGINT)  # fast shutdown, as `pg_ctl -m fast`
        down = wait_for(
            lambda: (
                (answer := http_get(f"{running.base}/readyz"))[0] == 503
                and "database" in json.loads(answer[1])["failed"]
                and json.loads(answer[1])
            ),
            "/readyz 503 naming the database",
            up,
            timeout=60,
        )
    finally:
        os.kill(up.process.pid, signal.SIGCONT)
    stopped = time.monotonic()

    assert down["checks"]["database"] == "unreachable"
    assert down["checks"]["pgvector"] == "database unreachable"
    restarted(up, "PostgreSQL", before["PostgreSQL"])
    ready_again(running, stopped)
    assert re.search(exited_line("PostgreSQL", "status 0"), up.output())
    # The same daphne serves a page that needs the database (a session, a user).
    logins = json.loads((running.var / "demo-logins.json").read_text())
    password = next(login["password"] for login in logins if login["username"] == "member")
    assert "Your roles: Member." in sign_in(running.base, "member", password)
    assert child_pids(up)["web"] == before["web"]


def test_a_killed_postgres_is_restarted_and_web_and_worker_reconnect(running):
    up = running.up
    before = child_pids(up)
    killed = time.monotonic()

    os.kill(before["PostgreSQL"], signal.SIGKILL)

    restarted(up, "PostgreSQL", before["PostgreSQL"])
    ready_again(running, killed)
    line = exited_line("PostgreSQL", "signal SIGKILL")
    assert re.search(line, up.output())
    logins = json.loads((running.var / "demo-logins.json").read_text())
    password = next(login["password"] for login in logins if login["username"] == "member")
    assert "Your roles: Member." in sign_in(running.base, "member", password)
    # The worker's kept connections died with the server; a task after the restart reconnects.
    # A sweep's `succeeded` shows again in a pool process that logged a sweep's failure while
    # the server was away (run-resume runs every second here; ops.logs.RoutineTasks).
    restart_line = line + r"(.*\n)*?warden: PostgreSQL restarted \(pid \d+\)\n"
    wait_for(
        lambda: re.search(r"run_resume_task\[[^]]+\] succeeded", output_after(up, restart_line)),
        "a task using the database after the restart",
        up,
    )
    assert {k: child_pids(up)[k] for k in ("web", "worker", "beat")} == {
        k: before[k] for k in ("web", "worker", "beat")
    }


def test_a_hung_postgres_fails_readyz_within_seconds_instead_of_hanging_it(running):
    up = running.up
    postgres = child_pids(up)["PostgreSQL"]
    os.kill(postgres, signal.SIGSTOP)  # accepts connections into its backlog, answers none
    try:
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 30
        while not answers or answers[-1][0] == 200:  # until the cached answer (2 s) expires
            assert time.monotonic() < deadline, answers
            answers.append(http_get(f"{running.base}/readyz", timeout=10))
            assert answers[-1][0] in (200, 503), answers  # 0: the probe hung past 10 s
            time.sleep(0.2)
        status, body = answers[-1]
    finally:
        os.kill(postgres, signal.SIGCONT)

    assert status == 503, body
    assert json.loads(body)["failed"][0] == "database"
    ready_again(running, time.monotonic())


def test_a_killed_web_server_and_beat_are_restarted(running):
    up = running.up
    before = child_pids(up)
    killed = time.monotonic()

    os.kill(before["web"], signal.SIGKILL)
    os.kill(before["beat"], signal.SIGKILL)

    restarted(up, "web", before["web"])
    ready_again(running, killed)  # on the same port: the launcher kept the listening socket
    restarted(up, "beat", before["beat"])
    line = exited_line("beat", "signal SIGKILL")
    assert re.search(line, up.output())
    wait_for(
        lambda: "Sending due task run-resume" in output_after(up, line),
        "the new beat sending a task",
        up,
    )


def test_after_restarts_a_stop_still_leaves_nothing_behind(running):
    up = running.up
    port = int(running.base.rsplit(":", 1)[1])

    assert up.stop(signal.SIGTERM) == 0, up.output()
    assert up.survivors() == []
    assert port_is_free(port)
    assert "warden: stopped" in up.output()


def test_a_process_that_keeps_exiting_makes_the_launcher_give_up(tmp_path, unused_tcp_port):
    var = tmp_path / "var"
    base = f"http://127.0.0.1:{unused_tcp_port}"
    up = Up(env=embedded_env(var, PORT=str(unused_tcp_port)), log=tmp_path / "up.log")
    try:
        up.wait_ready(f"{base}/readyz", timeout=180)
        # An append-only file Redis cannot read: every restart exits at once.
        aof = var / "redis" / "appendonly.aof"
        broken = aof.with_name("broken.aof")
        broken.write_bytes(b"this is not a Redis command\r\n")
        broken.rename(aof)  # the running server keeps writing to the file it opened
        os.kill(child_pids(up)["Redis"], signal.SIGKILL)
        status = up.process.wait(120)
    finally:
        up.stop(signal.SIGTERM)

    output = up.output()
    assert status == 1, output
    assert (
        "warden: Redis exited 5 times within 60 s (last: status 1); giving up: stopping Warden\n"
    ) in output
    assert output.count("warden: Redis did not start again: Redis exited while starting") == 4
    assert "warden: stopping web, worker, beat\n" in output
    assert up.survivors() == []
    assert port_is_free(unused_tcp_port)
