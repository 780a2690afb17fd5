"""Test-session plumbing: the embedded PostgreSQL and Redis run for the whole session."""

from __future__ import annotations

import shutil
import signal

import pytest

from portal.embedded import EmbeddedPostgres, EmbeddedRedis

_servers: list[EmbeddedPostgres | EmbeddedRedis] = []


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    if not settings.VAR_DIR.name.startswith("warden-test-"):
        raise pytest.UsageError(f"refusing to run tests with WARDEN_VAR_DIR={settings.VAR_DIR}")
    # A shell without job control starts background commands (`make test &`) with SIGINT
    # ignored, and children inherit it: the launchers the tests stop with Ctrl-C would not stop.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for server in (EmbeddedPostgres(settings.EMBEDDED), EmbeddedRedis(settings.EMBEDDED)):
        _servers.append(server)
        server.start()


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

    from django.db import connection

    from portal.celery import app

    workers = []

    def start(**env):
        name = f"test-{os.getpid()}-{len(workers)}@localhost"
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
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
        deadline = time.monotonic() + 30
        while not app.control.ping(destination=[name], timeout=0.5):
            assert worker.poll() is None, "the worker exited while starting"
            assert time.monotonic() < deadline, "the worker did not answer a ping within 30 s"
        return worker

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
