"""The tool form in a real browser (Debian's Chromium through Playwright): the JSON editors say
what is wrong while the admin types, with the validators that check on save."""

import os
import threading
from importlib import import_module

import pytest
from django.contrib.auth import get_user_model

from tests.chromium import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.usefixtures("committing_db"),  # the live server's thread reads what we write
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
        reason="Chromium is not installed (apt install chromium; CI installs it)",
    ),
]


@pytest.fixture
def server():
    """Django served on loopback for this test. The server's request threads open database
    connections of their own; a thread still holding one when the test ends (a browser's
    keep-alive) would keep the test database from being dropped, so they are closed here."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.db.backends.signals import connection_created
    from django.test.testcases import LiveServerThread

    opened = []

    def record(sender, connection, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            opened.append(connection.connection)

    connection_created.connect(record, weak=False)
    thread = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    yield f"http://127.0.0.1:{thread.port}"
    thread.terminate()
    connection_created.disconnect(record)
    for raw in opened:
        if raw is not None and not raw.closed:
            raw.close()


@pytest.fixture
def page(server, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright runs an event loop
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gail = get_user_model().objects.create_user("gail", is_staff=True, is_superuser=True)
    # Before Playwright starts: inside it, database access would open a connection of its own.
    cookie = signed_in(gail, server)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
        )
        context = browser.new_context()
        context.add_cookies([cookie])
        page = context.new_page()
        page.goto(f"{server}/admin/tools/tool/add/")
        yield page
        browser.close()


def signed_in(user, url: str) -> dict:
    """A session cookie for `user`, as Django's test client's force_login makes one."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return {"name": settings.SESSION_COOKIE_NAME, "value": session.session_key, "url": url}


def verdict(page, field: str):
    return page.locator(f"#id_{field} ~ .json-verdict")


def test_the_json_editors_check_as_the_admin_types(page):
    page.select_option("#id_kind", "http")
    page.fill("#id_parameters", "")
    page.locator("#id_parameters").type(
        '{"type": "object", "properties": {"id": {"type": "integr"}}}'
    )

    problem = verdict(page, "parameters")
    problem.filter(has_text="Not a valid JSON Schema at /properties/id/type").wait_for()
    assert "errornote" in problem.get_attribute("class")

    page.fill("#id_parameters", '{"type": "object", "required": ["id"]}')
    page.locator("#id_parameters").type(" ")  # an input event, as typing makes
    problem.filter(has_text="Valid.").wait_for()

    page.fill("#id_config", "")
    page.locator("#id_config").type('{"method": "GET", "url": "https://crm.example.com/{account}"}')
    config = verdict(page, "config")
    config.filter(has_text="The URL's {account} must be a required argument").wait_for()
