"""Drift watch in a real browser (tests/browser/conftest.py): two weeks of the help desk's runs
and a day that drifted, checked as the nightly job does; the admin follows the index's count to
the drift page, opens the agent's charts, acknowledges an alert; no serious accessibility
violation (axe) at desktop or phone width, no console errors."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from agents.drift import drift_check
from agents.models import Agent, DriftCheck
from agents.tests.test_drift import _day
from tests.browser.axe import described, violations
from tests.browser.conftest import needs_chromium, screenshot

pytestmark = needs_chromium


def test_the_admin_reads_and_acknowledges_a_drift_alert(portal, browser):
    agent = Agent.objects.get(slug="help-desk")
    member = get_user_model().objects.get(username="member")
    yesterday = timezone.localdate() - timedelta(days=1)
    for back in range(1, 15):
        _day(agent, member, yesterday - timedelta(days=back))
    refunds = (("issue_refund", 28), ("lookup_order", 8), ("create_ticket", 4))
    _day(agent, member, yesterday, rejected=12, tools=refunds)
    drift_check(day=yesterday)

    admin = browser("admin")
    admin.goto(f"{portal.url}/admin/")
    expect(admin.locator('[data-figure="drift-alerts"]')).to_have_text("2")
    admin.locator('[data-figure="drift-alerts"]').click()
    admin.wait_for_url(f"{portal.url}/admin/dashboard/drift/")
    alerts = admin.locator("#drift-alerts tbody tr")
    expect(alerts).to_have_count(2)
    found = {"drift": described(violations(admin))}
    screenshot(admin, "drift")

    admin.get_by_role("link", name="IT help desk").first.click()
    expect(admin.locator("#refusals-table tbody tr").last).to_contain_text("30.0% of 40")
    found["drift-agent"] = described(violations(admin))
    screenshot(admin, "drift-agent")

    admin.goto(f"{portal.url}/admin/dashboard/drift/")
    admin.get_by_role("button", name="Acknowledge IT help desk's tool-call mix alert").click()
    expect(admin.locator(".messagelist")).to_contain_text("is acknowledged")
    expect(alerts).to_have_count(1)
    assert DriftCheck.objects.get(signal="tool_mix").acknowledged_at is not None

    phone = browser("admin", width=390, height=844)
    phone.goto(f"{portal.url}/admin/dashboard/drift/{agent.pk}/")
    found["drift-agent-phone"] = described(violations(phone))
    screenshot(phone, "drift-agent-phone")

    report = [f"{page}: {line}" for page, lines in found.items() for line in lines]
    assert report == [], "\n".join(report)
    assert portal.console == []
