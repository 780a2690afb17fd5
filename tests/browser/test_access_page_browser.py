"""The Access page in a real browser (governance/access_admin.py): a governance admin finds a team
by typing part of its name, previews denying it the only model route, is told the change locks
the whole team out, must confirm, and then the denial holds and is audited."""

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from agents.models import Deployment, ModelRoute
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance import roles
from governance.access import may
from governance.models import Action
from governance.services import access_grant
from tests.browser.conftest import DEADLINE_MS, needs_chromium, screenshot
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.processes import daphne_on_test_database, wait_until_alone_on_the_database

pytestmark = [needs_chromium]
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def warden_db(committing_db):
    """The test database, committing (daphne reads it); dropped only once daphne's
    connections are gone."""
    yield
    wait_until_alone_on_the_database()


def test_denying_a_team_its_only_route_is_previewed_confirmed_and_audited(
    unused_tcp_port, tmp_path, monkeypatch
):
    users = get_user_model().objects
    admin = users.create_user("gail", password=PASSWORD, is_staff=True, is_superuser=True)
    admin.groups.add(Group.objects.get_or_create(name=roles.GOVERNANCE_ADMIN)[0])
    team = Group.objects.create(name="Field Sales EMEA")
    Group.objects.create(name="Field Service")  # what the search must leave out
    sellers = [users.create_user(name) for name in ("sam", "sue")]
    team.user_set.add(*sellers)
    route = ModelRoute.objects.create(name="only-route")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    access_grant(obj=route, holder=team, action=Action.USE, actor=SYSTEM)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expect.set_options(timeout=DEADLINE_MS)
    with daphne_on_test_database(unused_tcp_port) as url, sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(DEADLINE_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/login/")
            page.get_by_label("Username").fill("gail")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{url}/")

            page.goto(f"{url}/admin/agents/modelroute/{route.pk}/change/")
            expect(page.locator("#access-summary")).to_contain_text("3 people now")
            page.locator(".object-tools").get_by_role("link", name="Access").click()
            expect(page.locator("#access-count")).to_contain_text("3 people may use it now.")
            people = page.locator("#people")
            expect(people).to_contain_text("team Field Sales EMEA")

            page.locator("#change-access .select2-selection").click()
            page.locator(".select2-search__field").fill("sales em")
            option = page.get_by_role("option", name="Field Sales EMEA (team)")
            expect(option).to_be_visible()
            expect(page.get_by_role("option", name="Field Service (team)")).to_have_count(0)
            option.click()
            page.get_by_label("Deny").check()
            page.get_by_role("button", name="Preview").click()

            expect(page.locator("#lockout-warning")).to_contain_text("team Field Sales EMEA")
            expect(page.locator("#preview-lost")).to_contain_text("sam, sue")
            screenshot(page, "access-page-preview")
            assert may(sellers[0], route, Action.USE)  # a preview changes nothing

            page.get_by_role("button", name="Apply this change").click()
            expect(page.locator("#access-preview")).to_contain_text(
                "Confirm that you mean to lock them out."
            )
            assert may(sellers[0], route, Action.USE)
            page.get_by_label("I understand that this locks them out.").check()
            page.get_by_role("button", name="Apply this change").click()

            expect(page.locator(".messagelist")).to_contain_text(
                "Team Field Sales EMEA: denied. 0 gained access, 2 lost it."
            )
            expect(page.locator("#denials")).to_contain_text("Field Sales EMEA")
            screenshot(page, "access-page-after")
            assert errors == []
        finally:
            chromium.close()
            # Inside Playwright's event loop Django kept a connection of its own for the
            # test's checks above: closed, so the database is left to the fixture at once.
            connections.close_all()

    assert not any(may(seller, route, Action.USE) for seller in sellers)
    event = AuditEvent.objects.filter(target_id=str(route.pk), action="access.denied").get()
    assert event.actor_id == str(admin.pk)
    assert json.loads(event.data)["holder_name"] == team.name
    assert re.fullmatch(r"\d+", event.target_id)
