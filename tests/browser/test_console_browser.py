"""The governance console in a real browser (tests/browser/conftest.py): the admin opens the
dashboard from the index, changes its range (a preset, a bad range, two dates), reads each
chart's table; the index shows the audit trail's latest events and keeps OAuth's internals in
a collapsed section; desktop and phone width, no console errors."""

from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import expect

from agents.models import Agent, Conversation, Run, RunStep
from audit.services import Target, audit_record
from governance.models import ApprovalRequest
from tests.browser.conftest import needs_chromium, screenshot
from tools.models import Tool

pytestmark = needs_chromium


def _history() -> None:
    """Three weeks of two teams' runs, approvals decided after an hour or two, a fallback, a
    withheld source and a tool enabled, for the dashboard and the side panel."""
    member = get_user_model().objects.get(username="member")
    member.groups.add(Group.objects.create(name="Field sales"))
    reviewer = get_user_model().objects.get(username="reviewer")
    reviewer.groups.add(Group.objects.create(name="Support"))
    agent = Agent.objects.get(slug="help-desk")
    tool = Tool.objects.get(name="create_ticket")
    now = timezone.now()
    for day in range(21):
        for n, actor in enumerate([member] * (day % 4 + 1) + [reviewer] * (day % 2)):
            conversation = Conversation.objects.create(owner=actor, agent=agent)
            run = Run.objects.create(
                agent=agent,
                conversation=conversation,
                actor=actor,
                input="q",
                state="failed" if n == 2 else "succeeded",
                error="model provider refused the request" if n == 2 else "",
                cost=Decimal("0.0125") * (n + 1),
                prompt_tokens=120,
            )
            when = now - timedelta(days=day)
            Run.objects.filter(pk=run.pk).update(created_at=when)
            RunStep.objects.create(
                run=run,
                index=0,
                kind="model",
                output={"fallbacks": ["primary"] if n == 1 else []},
                deployment="eu-1" if n == 1 else "primary",
                started_at=when,
                finished_at=when,
            )
            if n == 0 and day % 3 == 0:
                request = ApprovalRequest.objects.create(
                    key=f"run:{run.pk}:0:0",
                    run=run,
                    agent=agent,
                    tool=tool,
                    tool_name=tool.name,
                    tool_version="1",
                    requested_by=actor,
                    arguments={},
                    arguments_hash="x",
                    expires_at=when + timedelta(days=1),
                    status="approved",
                    decided_by=get_user_model().objects.get(username="admin"),
                    decided_at=when,
                )
                ApprovalRequest.objects.filter(pk=request.pk).update(
                    created_at=when - timedelta(hours=1 + day % 2)
                )
    with transaction.atomic():
        found = {"guardrail": "injection", "action": "block", "detail": "passage: quarantined"}
        audit_record(actor=None, action="guardrail.found", target=Target.of(run), data=found)
        audit_record(actor=reviewer, action="tool.enabled", target=Target.of(tool))


def test_the_admin_reads_the_console_at_desktop_and_phone_width(portal, browser):
    _history()
    admin = browser("admin")
    admin.goto(f"{portal.url}/admin/")

    # The index: the trail's latest events beside the apps, OAuth's internals folded away.
    panel = admin.locator("#recent-audit-module")
    expect(panel.get_by_role("heading", name="Recent audit events")).to_be_visible()
    expect(panel.get_by_role("link", name="tool.enabled")).to_be_visible()
    main = admin.locator("#content-main")
    expect(main.get_by_role("link", name="Access tokens", exact=True)).to_be_visible()
    internals = admin.locator("details.oauth-internals")
    expect(internals.get_by_role("link", name="Refresh tokens")).to_be_hidden()
    internals.locator("summary").click()
    expect(internals.get_by_role("link", name="Refresh tokens")).to_be_visible()
    assert main.locator("table").get_by_role("link", name="Grants").count() == 0
    screenshot(admin, "console-index")

    # The dashboard: the last 30 days by default, then a preset, a bad range, two dates.
    admin.get_by_role("link", name="Open the dashboard").click()
    admin.wait_for_url(f"{portal.url}/admin/dashboard/")
    expect(admin.get_by_role("heading", name="Spend per team")).to_be_visible()
    assert admin.locator("svg.chart").count() == 5
    expect(admin.locator("[data-figure=runs]")).to_have_text("61")
    teams = admin.get_by_role("table", name="Usage and spend per team over the range")
    expect(teams.get_by_role("row", name="Field sales")).to_be_visible()
    expect(teams.get_by_role("row", name="Support")).to_be_visible()
    admin.get_by_role("link", name="Last 7 days").click()
    admin.wait_for_url("**/admin/dashboard/?days=7")
    expect(admin.get_by_role("link", name="Last 7 days")).to_have_attribute("aria-current", "true")
    expect(admin.locator("[data-figure=runs]")).to_have_text("19")
    waits = admin.get_by_role("table", name="Approval waiting times per day, in hours")
    assert waits.locator("tbody tr").count() == 7
    expect(admin.locator("[data-figure=approval-median]")).to_have_text("1.0 h")

    today = timezone.localdate()
    admin.get_by_label("From", exact=True).fill(f"{today:%Y-%m-%d}")
    admin.get_by_label("To", exact=True).fill(f"{today - timedelta(days=3):%Y-%m-%d}")
    admin.get_by_role("button", name="Show").click()
    expect(admin.get_by_role("alert")).to_contain_text("the start date must come first")
    since = today - timedelta(days=13)
    admin.get_by_label("From", exact=True).fill(f"{since:%Y-%m-%d}")
    admin.get_by_label("To", exact=True).fill(f"{today:%Y-%m-%d}")
    admin.get_by_role("button", name="Show").click()
    expect(admin.get_by_role("alert")).to_have_count(0)
    expect(admin.locator("#range-title")).to_contain_text(f"{since:%b} {since.day}, {since:%Y}")
    guardrails = admin.get_by_role("table", name="Guardrail findings per day")
    expect(guardrails.locator("tbody tr").last).to_contain_text("1")
    faults = admin.get_by_role("table", name="Fallbacks and errors per day")
    assert faults.locator("tbody tr").count() == 14
    errors = admin.get_by_role("table", name="The most frequent reasons runs failed")
    expect(errors).to_contain_text("model provider refused the request")
    screenshot(admin, "console-dashboard")

    phone = browser("admin", width=390, height=844)
    phone.goto(f"{portal.url}/admin/dashboard/?days=30")
    expect(phone.get_by_role("heading", name="Fallbacks and errors")).to_be_visible()
    screenshot(phone, "console-dashboard-phone")
    phone.goto(f"{portal.url}/admin/")
    expect(phone.get_by_role("heading", name="Recent audit events")).to_be_visible()
    screenshot(phone, "console-index-phone")
    assert portal.console == []
