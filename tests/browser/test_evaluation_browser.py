"""An evaluation in a real browser (tests/browser/conftest.py): the governance admin, the demo
agent's owner, opens its evaluation set, evaluates the live version, follows the evaluation on
its page until the worker has run every case (the page asks for its progress by itself) and
reads each case's answer, scores and run. No console errors."""

import re

from playwright.sync_api import expect

from agents.models import Agent, EvaluationCase, EvaluationSet
from agents.versions import version_record
from tests.browser.conftest import needs_chromium, screenshot
from tests.browser.test_portal_browser import LEAVE
from tests.model_server import Reply

pytestmark = needs_chromium


def test_the_owner_evaluates_the_live_version_and_reads_the_results(portal, browser):
    agent = Agent.objects.get(slug="help-desk")
    version_record(agent=agent, actor=None, reason="as seeded")
    agent.refresh_from_db()
    handbook = EvaluationSet.objects.create(agent=agent, name="Handbook")
    EvaluationCase.objects.create(
        set=handbook,
        question="How many days of annual leave do I get?",
        expected_facts=["25 days"],
    )
    EvaluationCase.objects.create(
        set=handbook,
        question="And <b>parental</b> leave?",
        expected_facts=["16 weeks"],
    )
    portal.model.script("demo", Reply.say(LEAVE), Reply.say(LEAVE))
    admin = browser("admin")

    admin.goto(f"{portal.url}/admin/agents/evaluationset/{handbook.pk}/change/")
    admin.get_by_role("link", name="Evaluate", exact=True).click()
    version = admin.get_by_label("Version")
    expect(version.locator("option:checked")).to_contain_text(
        f"v{agent.live_version.number} (live)"
    )
    admin.get_by_role("button", name="Start the evaluation").click()

    admin.wait_for_url("**/admin/agents/evaluationrun/*/change/")
    expect(admin.locator(".messagelist")).to_contain_text("started")
    # The page follows the evaluation by itself, no reload, until both cases are done.
    state = admin.locator(".evaluation-state")
    expect(state).to_contain_text("Succeeded: 2 of 2 cases done")
    cases = admin.locator("table.evaluation-cases tbody tr")
    expect(cases).to_have_count(2)
    leave = cases.filter(has_text="How many days of annual leave do I get?")
    expect(leave).to_contain_text("25 days of paid annual leave")
    expect(leave).to_contain_text("passed")
    parental = cases.filter(has_text="And <b>parental</b> leave?")  # as text, escaped
    expect(parental).to_contain_text("failed")
    screenshot(admin, "evaluation-report")

    # Its run's trace is one click away.
    leave.get_by_role("link", name=re.compile(r"^run \d+$")).click()
    admin.wait_for_url("**/runs/*/")
    expect(admin.locator("body")).to_contain_text("25 days of paid annual leave")
    assert portal.console == []
