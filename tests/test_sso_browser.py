"""Single sign-on in a real browser: Warden (daphne, its own process) → the provider's sign-in
form (django-oauth-toolkit, its own process) → back to Warden signed in, with the groups the
provider's claim maps to; and a provider's bad ID token ending on Warden's refusal page."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from sso.models import Identity
from tests.browser.conftest import DEADLINE_MS, needs_chromium, screenshot
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, DotProvider
from tests.oidc_provider.fake import FakeProvider
from tests.processes import daphne_on_test_database, free_port, wait_until_alone_on_the_database

pytestmark = needs_chromium
GROUP_MAP = {"warden-reviewers": "Reviewer", "engineering": ["Member", "Team Engineering"]}


def warden_env(issuer: str) -> dict[str, str]:
    return {
        "WARDEN_OIDC_ISSUER": issuer,
        "WARDEN_OIDC_CLIENT_ID": CLIENT_ID,
        "WARDEN_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "WARDEN_OIDC_ALLOW_HTTP_LOOPBACK": "true",
        "WARDEN_OIDC_GROUP_MAP": json.dumps(GROUP_MAP),
        "WARDEN_OIDC_PROVIDER_NAME": "Test IdP",
    }


@pytest.fixture
def warden_db(committing_db):
    """The test database, committing (daphne reads it); dropped only once daphne's
    connections are gone (the server may take a moment to see them end)."""
    yield

    wait_until_alone_on_the_database()


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright runs an event loop
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expect.set_options(timeout=DEADLINE_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context().new_page()
        page.set_default_timeout(DEADLINE_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, errors
        browser.close()
        # Inside Playwright's event loop Django keeps connections per context: the test's own
        # queries had one of their own, which must not outlive the test database.
        connections.close_all()


def test_a_person_signs_in_through_the_provider_and_gets_the_mapped_groups(warden_db, chromium):
    page, errors = chromium
    warden_port = free_port()
    provider = DotProvider(
        port=free_port(),
        redirect_uris=[f"http://127.0.0.1:{warden_port}/sso/callback/"],
        users=[
            {
                "username": "alice",
                "password": "alice-provider-pw",
                "email": "alice@example.com",
                "groups": ["engineering", "warden-reviewers"],
            }
        ],
    )
    try:
        with daphne_on_test_database(warden_port, **warden_env(provider.issuer)) as url:
            page.goto(f"{url}/chat/")  # signed out: the sign-in page, next=/chat/
            page.get_by_role("link", name="Sign in with Test IdP").click()
            page.wait_for_url(re.compile(rf"^{re.escape(provider.url)}/accounts/login/"))
            page.get_by_label("Provider username").fill("alice")
            page.get_by_label("Provider password").fill("alice-provider-pw")
            page.get_by_role("button", name="Log in at the provider").click()
            expect(page).to_have_url(f"{url}/chat/")  # the error names the page it is on
            page.goto(f"{url}/")
            roles = page.get_by_text("Your roles: Member, Reviewer, Team Engineering.")
            expect(roles).to_be_visible()
            screenshot(page, "sso-signed-in")
    finally:
        provider.stop()

    alice = get_user_model().objects.get(username="alice")
    assert set(alice.groups.values_list("name", flat=True)) == {
        "Reviewer",
        "Member",
        "Team Engineering",
    }
    assert Identity.objects.get(user=alice).issuer == provider.issuer
    assert errors == []


def test_a_bad_id_token_ends_on_a_clear_refusal_page(warden_db, chromium):
    page, errors = chromium
    fake = FakeProvider()
    fake.fault = "aud"
    try:
        with daphne_on_test_database(free_port(), **warden_env(fake.issuer)) as url:
            page.goto(f"{url}/login/")
            page.get_by_role("link", name="Sign in with Test IdP").click()
            page.wait_for_url(f"{url}/sso/callback/**")
            expect(page.get_by_role("heading")).to_have_text("Sign-in with Test IdP failed")
            expect(page.get_by_role("alert")).to_have_text(
                "The ID token was issued for another client (aud), not Warden."
            )
            screenshot(page, "sso-refused")
            page.goto(f"{url}/")
            page.wait_for_url(f"{url}/login/?next=/")  # nobody signed in
    finally:
        fake.close()

    assert not get_user_model().objects.exists()
    assert errors == []
