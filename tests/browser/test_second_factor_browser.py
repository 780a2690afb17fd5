"""The second factor in a real browser (portal/second_factor.py), daphne serving Warden with it
enforced for reviewers: a reviewer enrols by reading the key off the page and computing the code
as an authenticator app does, receives the recovery codes, and signs in again with a code; an
owing session's pages stay shut."""

import base64
import re
import time

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import expect, sync_playwright

from governance import roles
from tests.browser.conftest import DEADLINE_MS, needs_chromium, screenshot
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.processes import daphne_on_test_database

pytestmark = [needs_chromium, pytest.mark.usefixtures("committing_db")]
PASSWORD = "correct horse battery staple"


def app_code(key_text: str, *, used_step: int | None = None) -> str:
    """The code an authenticator shows for the key as the page printed it (base32, grouped);
    when its step is `used_step` (a code is good once), the next one, as a user waits for it.

    Not simply the next step's code: the server learns the app's drift at enrolment, and an
    enrolment whose code was checked a step later (a busy machine) moves the server's window
    back by one, out of the next code's reach."""
    app = TOTP(base64.b32decode(key_text.replace(" ", "")))
    app.time = time.time()
    if used_step is not None and app.t() <= used_step:
        app.drift = used_step + 1 - app.t()
    return f"{app.token():06d}"


def test_a_reviewer_enrols_then_signs_in_with_a_code(unused_tcp_port, tmp_path, monkeypatch):
    user = get_user_model().objects.create_user("rhea", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name=roles.REVIEWER)[0])
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expect.set_options(timeout=DEADLINE_MS)
    with (
        daphne_on_test_database(unused_tcp_port, WARDEN_SECOND_FACTOR_GROUPS=roles.REVIEWER) as url,
        sync_playwright() as playwright,
    ):
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_context().new_page()
            page.set_default_timeout(DEADLINE_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def sign_in() -> None:
                page.goto(f"{url}/login/")
                page.get_by_label("Username").fill("rhea")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()

            sign_in()
            page.wait_for_url(re.compile(r".*/login/second-factor/enrol/\?next=%2F$"))
            expect(page.get_by_role("heading", name="Set up a second factor")).to_be_visible()
            qr = page.get_by_role("img", name="QR code of the authenticator key")
            expect(qr).to_be_visible()
            assert qr.evaluate("image => image.naturalWidth") > 0  # the SVG decoded
            key = page.locator("#second-factor-key").inner_text()
            # Nothing else is open meanwhile: the inbox sends the session back here.
            page.goto(f"{url}/inbox/")
            page.wait_for_url(re.compile(r".*/login/second-factor/enrol/\?next=%2Finbox%2F$"))
            assert page.locator("#second-factor-key").inner_text() == key  # the same key

            page.get_by_label("Code from the app").fill(app_code(key))
            page.get_by_role("button", name="Confirm").click()
            expect(page.get_by_role("heading", name="Recovery codes")).to_be_visible()
            codes = page.locator("#recovery-codes li").all_inner_texts()
            assert len(codes) == 10
            screenshot(page, "second-factor-recovery-codes")
            page.get_by_role("link", name="Continue").click()
            page.wait_for_url(f"{url}/inbox/")

            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(re.compile(r".*/login/$"))
            sign_in()
            page.wait_for_url(re.compile(r".*/login/second-factor/\?next=%2F$"))
            used = TOTPDevice.objects.get(user=user, confirmed=True).last_t
            page.get_by_label("Code").fill(app_code(key, used_step=used))  # not the one used
            page.get_by_role("button", name="Verify").click()
            page.wait_for_url(f"{url}/")
            expect(page.get_by_text(roles.REVIEWER).first).to_be_visible()
            assert errors == []
        finally:
            chromium.close()
