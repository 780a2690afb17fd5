"""The whole portal for a real browser: daphne (HTTP and websockets) and a Celery worker in
their own processes on the test database, the demo workspace seeded, the demo agent's model
served by the scripted OpenAI-compatible server, and Debian's Chromium through Playwright.

Every wait is for an event (an element, a text, a URL) with a deadline long enough for a
machine under load (DEADLINE_MS): a wait that runs out means the page never got there.

Screenshots go to WARDEN_TEST_ARTIFACTS (default: test-artifacts/ in the checkout); when a
test fails, every page it had open is photographed there too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.processes import daphne_on_test_database, wait_until_alone_on_the_database

ARTIFACTS = Path(
    os.environ.get("WARDEN_TEST_ARTIFACTS")
    or Path(__file__).resolve().parents[2] / "test-artifacts"
)

# Playwright's `expect` gives up after 5 s by default, and its actions after 30 s: too short
# for a streamed answer on two busy cores (a worker, daphne, Chromium and other tests): under
# `stress --cpu 2` a card took just over 60 s to show "awaiting approval".
DEADLINE_MS = 120_000

# A conftest's pytestmark marks nothing: the test modules apply this one.
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="Chromium is not installed (apt install chromium; CI installs it)",
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@dataclass
class Portal:
    url: str
    passwords: dict[str, str]
    model: object  # tests.model_server.ScriptedModelServer
    pages: list = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@pytest.fixture
def portal(committing_db, start_worker, server, tmp_path, unused_tcp_port):

    from agents.models import Agent, Deployment, Document, DocumentStatus
    from ops.demo import demo_workspace_seed

    logins = demo_workspace_seed(credentials_path=tmp_path / "logins.json")
    agent = Agent.objects.get(slug="help-desk")
    # The demo agent's model becomes a provider's (the scripted server, streaming): what it
    # says is the test's to choose; retrieval, tools, policy and everything else are Warden's.
    Deployment.objects.filter(route=agent.route).update(
        model="openai/scripted", api_base=server.base("demo")
    )
    worker = start_worker()  # ingests the handbook the seed queued, then runs the runs
    deadline = time.monotonic() + 180
    handbook = Document.objects.filter(knowledge_base__slug="handbook")
    while handbook.exclude(status=DocumentStatus.READY).exists() or not handbook.exists():
        assert time.monotonic() < deadline, "the handbook was not ingested within 180 s"
        time.sleep(0.2)
    with daphne_on_test_database(unused_tcp_port) as url:
        yield Portal(url, {x.username: x.password for x in logins if x.password}, server)
    worker.terminate()
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
    # Their connections end with them, but the server may take a moment to see it; the test
    # database is dropped (or emptied) only when nobody else is on it.
    wait_until_alone_on_the_database()


@pytest.fixture
def browser(portal, request, tmp_path, monkeypatch):
    """A Chromium; `open_as(username)` gives a signed-in page in a context of its own."""
    from django.db import connections
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright runs an event loop
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expect.set_options(timeout=DEADLINE_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def open_as(username: str, *, width: int = 1280, height: int = 800):
            context = chromium.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.set_default_timeout(DEADLINE_MS)
            page.on(
                "console",
                lambda m: (
                    portal.console.append(f"{username} {page.url}: {m.text}")
                    if m.type == "error"
                    else None
                ),
            )
            page.on("pageerror", lambda e: portal.console.append(f"{username} {page.url}: {e}"))
            page.goto(f"{portal.url}/login/")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(portal.passwords[username])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{portal.url}/")
            portal.pages.append(page)
            return page

        yield open_as
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for n, page in enumerate(portal.pages):
                with contextlib.suppress(Exception):  # a closed page: nothing to photograph
                    page.screenshot(
                        path=ARTIFACTS / f"{request.node.name}-failure-{n}.png", full_page=True
                    )
        chromium.close()
        # Inside Playwright's event loop Django keeps connections per context: the test's
        # database work here had one of its own.
        connections.close_all()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path
