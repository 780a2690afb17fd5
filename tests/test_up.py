"""`manage.py up`, the launcher behind `make run`, driven as a user drives it: as a process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import psycopg
import pytest
import redis as redis_lib
from django.conf import settings

from config.celery import app as celery_app
from tests.processes import (
    Up,
    embedded_env,
    free_port,
    http_get,
    manage,
    port_is_free,
    production_env,
    sign_in,
)


def admin_conninfo(dbname: str = "postgres") -> str:
    return f"host={settings.EMBEDDED.pg_socket_dir} user=postgres dbname={dbname}"


@pytest.fixture
def scratch_database(request):
    """Databases on the session's PostgreSQL, created on demand and dropped afterwards."""
    created: list[tuple[str, str | None]] = []

    def create(name: str, *, owner: str | None = None) -> str:
        with psycopg.connect(admin_conninfo(), autocommit=True) as db:
            if owner:
                db.execute(f'CREATE ROLE "{owner}" LOGIN')
            db.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        created.append((name, owner))
        host = urllib.parse.quote(str(settings.EMBEDDED.pg_socket_dir), safe="")
        return f"postgresql://{owner or 'postgres'}@{host}/{name}"

    yield create
    with psycopg.connect(admin_conninfo(), autocommit=True) as db:
        for name, owner in created:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if owner:
                db.execute(f'DROP ROLE IF EXISTS "{owner}"')


def tables(dbname: str) -> list[str]:
    with psycopg.connect(admin_conninfo(dbname)) as db:
        rows = db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


def test_fresh_start_is_ready_serves_the_portal_and_stops_every_process(tmp_path, unused_tcp_port):
    var = tmp_path / "var"
    base = f"http://127.0.0.1:{unused_tcp_port}"
    up = Up(env=embedded_env(var, PORT=str(unused_tcp_port)), log=tmp_path / "up.log")
    try:
        started = time.monotonic()
        ready = up.wait_ready(f"{base}/readyz")
        ready_at = time.monotonic()
        print(f"ready {ready_at - started:.1f} s after start")  # shown with -s

        assert ready == {
            "status": "ok",
            "checks": {"database": "ok", "pgvector": "ok", "redis": "ok", "celery": "ok"},
            "failed": [],
        }
        assert (var / "pg" / "PG_VERSION").read_text().strip() == "18"
        assert (var / "redis" / "redis.sock").is_socket()
        assert http_get(f"{base}/healthz") == (200, '{"status": "ok"}')

        logins = {
            e["username"]: e["password"] for e in json.loads((var / "demo-logins.json").read_text())
        }
        output = up.output()
        assert f"Warden is running at {base}/" in output
        # Ready means ready: the worker loaded its models at boot, before the banner.
        assert "worker warm in" in output
        assert output.index("worker warm in") < output.index("worker ready")
        assert output.index("worker ready") < output.index("Warden is running")
        assert re.search(rf"admin\s+{re.escape(logins['admin'])}\s+Governance admin", output)
        assert re.search(rf"member\s+{re.escape(logins['member'])}\s+Member", output)

        login_page = http_get(f"{base}/login/")[1]
        stylesheet = re.search(r'href="(/static/portal/warden\.[0-9a-f]+\.css)"', login_page).group(
            1
        )
        status, css = http_get(base + stylesheet)  # hashed by collectstatic, served by whitenoise
        assert (status, css.startswith(":root")) == (200, True)
        assert "Your roles: Member." in sign_in(base, "member", logins["member"])
        # The demo agent, on the offline model, answered by the launcher's own worker.
        asked = manage(
            *("ask", "help-desk", "my VPN is down, please open a ticket", "--as", "member"),
            env=embedded_env(var),
        )
        # Opening a ticket writes: the run waits for a reviewer (exit status 3), who approves
        # it here.
        assert asked.returncode == 3, asked.stderr
        assert asked.stdout.splitlines()[-1].startswith(
            "Waiting for approval of create_ticket (request 1)"
        )
        decided = manage(
            "decide", "approval", "1", "approve", "--as", "reviewer", env=embedded_env(var)
        )
        assert decided.returncode == 0, decided.stderr
        assert decided.stdout.splitlines()[0] == "Approved."
        assert decided.stdout.splitlines()[-1].startswith("Done. ticket: 1, status: open")

        second = manage("up", "--port", str(free_port()), env=embedded_env(var))
        assert second.returncode == 1
        assert second.stderr == (
            f"warden: error: Warden is already running with the data directory {var} "
            f"(PID {up.process.pid}): stop it first (Ctrl-C in its terminal), or set "
            "WARDEN_VAR_DIR to another directory\n"
        )
        assert http_get(f"{base}/readyz")[0] == 200  # the first one is untouched
        # The premise of the count below: beat has sent run-resume at least four times (it
        # started before ready). On a busy machine the steps above took longer than that.
        time.sleep(
            max(0.0, 3.2 * settings.WARDEN_RUN_RESUME_SECONDS - (time.monotonic() - ready_at))
        )
    finally:
        status = up.stop(signal.SIGINT)

    assert status == 0, up.output()
    assert {"postgres", "redis-server", "daphne", "celery worker", "celery beat"} <= up.tree_names()
    assert up.survivors() == []
    assert port_is_free(unused_tcp_port)
    assert "warden: stopped" in up.output()
    # Beat sent run-resume every few seconds all along (at least four times); the console
    # shows its first send and receipt, so the banner and the sign-ins above stay in view
    # (ops.logs.RoutineTasks). One more is allowed after a warning of beat's or of the
    # worker's (Celery's own at a broker hiccup shows the next one).
    assert up.output().count("Sending due task run-resume") in (1, 2)
    assert len(re.findall(r"run_resume_task\[[^\]]+\] received", up.output())) in (1, 2)


def test_second_start_reuses_the_data_and_recovers_a_stale_postmaster_pid(
    tmp_path, unused_tcp_port
):
    var = tmp_path / "var"
    base = f"http://127.0.0.1:{unused_tcp_port}"
    env = embedded_env(var, PORT=str(unused_tcp_port))
    first = Up(env=env, log=tmp_path / "first.log")
    try:
        first.wait_ready(f"{base}/readyz")
    finally:
        assert first.stop(signal.SIGTERM) == 0, first.output()
    logins = (var / "demo-logins.json").read_text()
    initialised = (var / "pg" / "PG_VERSION").stat().st_mtime_ns
    # What a crash leaves behind: a lock file naming a process that no longer exists.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (var / "pg" / "postmaster.pid").write_text(f"{dead.pid}\n{var / 'pg'}\n")

    second = Up(env=env, log=tmp_path / "second.log")
    try:
        second.wait_ready(f"{base}/readyz")
        password = {e["username"]: e["password"] for e in json.loads(logins)}["member"]
        assert "Your roles: Member." in sign_in(base, "member", password)
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.output()

    output = second.output()
    assert f"removed a stale {var / 'pg' / 'postmaster.pid'} (PID {dead.pid}" in output
    assert "seeded the demo workspace" not in output
    # Passwords are printed once, at the first start; later the banner points at the file.
    assert password in first.output()
    assert password not in output
    assert (
        f"demo users: admin, reviewer, member, integration; their passwords are in {var}" in output
    )
    assert (var / "demo-logins.json").read_text() == logins
    assert (var / "pg" / "PG_VERSION").stat().st_mtime_ns == initialised
    assert second.survivors() == []


def test_port_in_use_is_one_line_and_starts_nothing(tmp_path, unused_tcp_port):
    var = tmp_path / "var"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", unused_tcp_port))
        holder.listen()

        result = manage("up", env=embedded_env(var, PORT=str(unused_tcp_port)))

    assert result.returncode == 1
    assert result.stderr == (
        f"warden: error: port {unused_tcp_port} on 127.0.0.1 is already in use: stop the program "
        f"using it, or choose another port (PORT={unused_tcp_port + 1} make run)\n"
    )
    assert not (var / "pg").exists()
    assert not (var / "redis").exists()


def test_data_directory_of_a_running_postgres_is_refused(tmp_path, unused_tcp_port):
    # The test session's own embedded PostgreSQL is running in settings.VAR_DIR.
    pid = int((settings.EMBEDDED.pg_data / "postmaster.pid").read_text().split()[0])

    result = manage("up", env=embedded_env(settings.VAR_DIR, PORT=str(unused_tcp_port)))

    assert result.returncode == 1
    assert result.stderr == (
        f"warden: error: the PostgreSQL data directory {settings.EMBEDDED.pg_data} is in use by "
        f"a running server (PID {pid}): stop that Warden first, or set WARDEN_VAR_DIR to another "
        "directory\n"
    )
    assert result.stdout == ""  # nothing was started, so nothing was announced
    with psycopg.connect(admin_conninfo()) as db:  # and that server is unharmed
        assert db.execute("SELECT 1").fetchone() == (1,)


def test_external_database_where_pgvector_may_not_be_created_is_refused(
    tmp_path, unused_tcp_port, scratch_database
):
    url = scratch_database("no_vector", owner="plain_owner")
    env = production_env(
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        WARDEN_VAR_DIR=str(tmp_path / "var"),
        PORT=str(unused_tcp_port),
    )

    result = manage("up", env=env)

    assert result.returncode == 1
    assert result.stderr == (
        f"warden: error: database role 'plain_owner' may not create the pgvector extension in "
        f"{settings.EMBEDDED.pg_socket_dir}:5432/no_vector: ask a superuser to run "
        "`CREATE EXTENSION vector;` in that database, then start Warden again\n"
    )
    assert tables("no_vector") == []  # not migrated
    assert not (tmp_path / "var" / "pg").exists()  # no embedded server either
    assert port_is_free(unused_tcp_port)


def test_unreachable_redis_is_refused_before_anything_starts(
    tmp_path, unused_tcp_port, scratch_database
):
    url = scratch_database("redis_down")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        redis_port = closed.getsockname()[1]
    env = production_env(
        DATABASE_URL=url,
        REDIS_URL=f"redis://:topsecret@127.0.0.1:{redis_port}/0",
        WARDEN_VAR_DIR=str(tmp_path / "var"),
        PORT=str(unused_tcp_port),
    )

    result = manage("up", env=env)

    assert result.returncode == 1
    assert result.stderr.startswith(
        f"warden: error: cannot reach Redis at redis://127.0.0.1:{redis_port}/0 ("
    )
    assert result.stderr.endswith("): check REDIS_URL and that the server is running\n")
    assert "topsecret" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert tables("redis_down") == []


def test_unreachable_external_database_is_one_line(tmp_path, unused_tcp_port):
    env = production_env(
        DATABASE_URL=f"postgresql://warden:pw@127.0.0.1:{unused_tcp_port}/warden",
        REDIS_URL=settings.REDIS_URL,
        WARDEN_VAR_DIR=str(tmp_path / "var"),
    )

    result = manage("up", "--worker-only", env=env)

    assert result.returncode == 1
    assert result.stderr.startswith(
        f"warden: error: cannot connect to PostgreSQL at 127.0.0.1:{unused_tcp_port}/warden ("
    )
    assert len(result.stderr.splitlines()) == 1
    assert "pw@" not in result.stderr


def test_external_services_web_and_worker_on_separate_launchers(
    tmp_path, unused_tcp_port, scratch_database
):
    """The production shape: nothing embedded, no demo seed, web and worker scaled apart."""
    url = scratch_database("external")
    env = production_env(
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        WARDEN_VAR_DIR=str(tmp_path / "var"),
        PORT=str(unused_tcp_port),
    )
    second_port = free_port()
    main = Up(env=env, log=tmp_path / "main.log")
    worker = Up("--worker-only", "--concurrency", "1", env=env, log=tmp_path / "worker.log")
    web = Up("--web-only", "--port", str(second_port), env=env, log=tmp_path / "web.log")
    try:
        assert main.wait_ready(f"http://127.0.0.1:{unused_tcp_port}/readyz")["status"] == "ok"
        assert web.wait_ready(f"http://127.0.0.1:{second_port}/readyz")["status"] == "ok"
        worker.remember_tree()
        expected = {f"warden-{main.process.pid}", f"warden-{worker.process.pid}"}
        deadline = time.monotonic() + 30
        answering: set[str] = set()
        while True:  # readiness needs one worker; both launchers' workers must answer
            try:
                replies = celery_app.control.ping(timeout=1)
            except (redis_lib.ConnectionError, OSError):
                # This process's pooled broker connection went stale while earlier tests ran
                # (CI: a broken pipe on its first PING): the pool reconnects on the next try.
                replies = []
            answering |= {name.split("@")[0] for reply in replies for name in reply}
            if expected <= answering or time.monotonic() > deadline:
                break
        assert expected <= answering
        assert "django_migrations" in tables("external")  # migrated once, under the lock
        with psycopg.connect(admin_conninfo("external")) as db:
            assert db.execute("SELECT count(*) FROM auth_user").fetchone() == (0,)  # no seed
        var = {p.name for p in (tmp_path / "var").iterdir()}
        assert var & {"pg", "redis", "demo-logins.json", "secret_key", "warden.lock"} == set()
        assert "static" in var
        assert "processes: web, worker, beat\n" in main.output()
        assert "processes: worker\n" in worker.output()
        assert "processes: web\n" in web.output()
        assert "demo logins" not in main.output()
    finally:
        with contextlib.ExitStack() as stops:  # every launcher is stopped, whatever fails
            # Killed outright, the launcher cannot stop its children: they must go by themselves.
            stops.callback(worker.kill)
            stops.callback(web.stop, signal.SIGINT)
            stops.callback(main.stop, signal.SIGTERM)

    assert (main.process.returncode, web.process.returncode) == (0, 0)
    assert main.survivors() == []
    assert web.survivors() == []
    assert worker.survivors(grace=30) == []


def test_help_lists_the_scaling_options():
    result = manage("up", "--help", env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"})

    assert result.returncode == 0

    for option in ("--web-only", "--worker-only", "--no-beat", "--port", "--no-migrate"):
        assert option in result.stdout


def test_stop_signal_during_the_first_start_leaves_a_usable_data_directory(
    tmp_path, unused_tcp_port
):
    var = tmp_path / "var"
    env = embedded_env(var, PORT=str(unused_tcp_port))
    first = Up(env=env, log=tmp_path / "first.log")
    deadline = time.monotonic() + 30
    while not (var / "pg.init").exists() and not (var / "pg").exists():  # initdb under way
        assert time.monotonic() < deadline, first.output()
        time.sleep(0.01)
    first.remember_tree()

    assert first.stop(signal.SIGTERM) == 0, first.output()
    assert "warden: stopped" in first.output()
    assert first.survivors() == []

    second = Up(env=env, log=tmp_path / "second.log")
    try:
        assert second.wait_ready(f"http://127.0.0.1:{unused_tcp_port}/readyz")["status"] == "ok"
    finally:
        assert second.stop(signal.SIGINT) == 0, second.output()
    assert not (var / "pg.init").exists()


def test_redis_credentials_in_the_query_are_not_echoed(tmp_path, scratch_database):
    env = production_env(
        DATABASE_URL=scratch_database("redis_query"),
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0?password=topsecret",
        WARDEN_VAR_DIR=str(tmp_path / "var"),
        PORT=str(free_port()),
    )

    result = manage("up", env=env)

    assert result.returncode == 1
    assert "topsecret" not in result.stderr
    assert "cannot reach Redis at redis://127.0.0.1:" in result.stderr


def test_a_data_directory_too_deep_for_sockets_is_one_line(tmp_path, unused_tcp_port):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4) / "var"

    result = manage("up", env=embedded_env(deep, PORT=str(unused_tcp_port)))

    assert result.returncode == 1
    assert result.stderr.startswith(f"warden: error: the data directory {deep} is too deep")
    assert result.stderr.endswith("set WARDEN_VAR_DIR to a shorter path, such as ~/warden-var\n")
    assert not (deep / "pg").exists()
