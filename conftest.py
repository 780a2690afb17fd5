"""Test-session plumbing: the embedded PostgreSQL and Redis run for the whole session."""

from __future__ import annotations

import shutil
import signal

import pytest

from ops.embedded import EmbeddedPostgres, EmbeddedRedis

pytest_plugins = ["tests.watchdog", "tests.personas", "tests.scheduling"]

_servers: list[EmbeddedPostgres | EmbeddedRedis] = []


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.has_plugin("xdist"):
        # `-p no:xdist` runs everything in this one process: the `-n` and `--dist` that
        # pyproject's addopts passes are accepted, and mean nothing.
        group = parser.getgroup("xdist", "pytest-xdist is off (-p no:xdist)")
        group._addoption("-n", "--numprocesses", dest="numprocesses", default=0)  # as xdist does
        group.addoption("--dist", dest="dist", default="no")


def _is_xdist_controller(config: pytest.Config) -> bool:
    """The process that hands tests to pytest-xdist's workers and runs none itself."""
    return (
        not hasattr(config, "workerinput")
        and getattr(config.option, "dist", "no") != "no"
        and bool(getattr(config.option, "tx", None))
        and not config.getoption("collectonly")
    )


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    if not settings.VAR_DIR.name.startswith("warden-test-"):
        raise pytest.UsageError(f"refusing to run tests with WARDEN_VAR_DIR={settings.VAR_DIR}")
    # A shell without job control starts background commands (`make test &`) with SIGINT
    # ignored, and children inherit it: the launchers the tests stop with Ctrl-C would not stop.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _is_xdist_controller(config):
        # Each worker starts servers of its own (tests/settings.py); the workers' first start
        # would race to create PostgreSQL's system user (as root): it is made here, once.
        EmbeddedPostgres(settings.EMBEDDED)._prepare_directories()
        return
    for server in (EmbeddedPostgres(settings.EMBEDDED), EmbeddedRedis(settings.EMBEDDED)):
        _servers.append(server)
        server.start()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # Once the test database is dropped, and before an xdist worker reports that it finished:
    # its controller then gives it 5 s before interrupting it with SIGINT (execnet).
    while _servers:
        _servers.pop().stop()


def pytest_unconfigure(config: pytest.Config) -> None:
    from django.conf import settings

    while _servers:
        _servers.pop().stop()
    shutil.rmtree(settings.VAR_DIR, ignore_errors=True)


@pytest.fixture
def unused_tcp_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    from tests.processes import free_port

    return free_port()


@pytest.fixture
def start_worker():
    """Start real Celery workers in their own processes, on the session's Redis and the test
    database; each is stopped afterwards. Extra keyword arguments go into its environment."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import kombu.exceptions
    import redis.exceptions
    from django.db import connection

    from config.celery import app

    workers = []

    def start(**env):
        name = f"test-{os.getpid()}-{len(workers)}@localhost"
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool",
                "solo",
                "--hostname",
                name,
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
            ],
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "WARDEN_TEST_DATABASE": connection.settings_dict["NAME"],
                **env,
            },
        )
        workers.append(worker)
        deadline = time.monotonic() + 120  # it imports Django, Celery and the app on busy cores
        while not pinged(name):
            assert worker.poll() is None, "the worker exited while starting"
            assert time.monotonic() < deadline, "the worker did not answer a ping within 120 s"
        worker.hostname = name  # for remote control (app.control ... destination=[hostname])
        return worker

    def pinged(name: str) -> bool:
        # a connection of its own: a pooled one may be one an earlier test's Redis fault broke
        # (CLIENT KILL, a restart), and closing the pool would close it for every later test
        try:
            with app.connection_for_write() as own:
                return bool(app.control.ping(destination=[name], timeout=0.5, connection=own))
        except (redis.exceptions.ConnectionError, kombu.exceptions.OperationalError):
            return False

    yield start
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


@pytest.fixture
def celery_worker_process(start_worker):
    """One real Celery worker, for as long as the test runs."""
    return start_worker()


@pytest.fixture
def committing_db(transactional_db):
    """Tests whose writes really commit (threads, processes). Afterwards Django empties every
    table with TRUNCATE, which the audit trail's append-only triggers refuse: for that flush
    only, this connection skips triggers (it is closed right after, so nothing else runs so)."""
    yield
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")


@pytest.fixture
def server():
    """A scripted OpenAI-compatible model server on loopback, for real HTTP through litellm."""
    from tests.model_server import ScriptedModelServer

    server = ScriptedModelServer()
    yield server
    server.close()


@pytest.fixture
def crm():
    """An HTTP server on loopback standing in for an enterprise system that HTTP tools call
    (tools/tests/endpoint.py)."""
    from tools.tests.endpoint import Endpoint

    endpoint = Endpoint()
    yield endpoint
    endpoint.close()
