"""The chat, the inbox and the console checked by axe-core (tests/browser/axe.py) in Chromium,
at desktop and phone widths, with real content on them: an answer with its citation, a tool
call waiting for approval, the admin's dashboard and lists. No serious or critical violation
of WCAG 2.2 A/AA or axe's best practices on any of them."""

import re

from playwright.sync_api import expect

from agents.models import Run
from tests.browser.axe import described, violations
from tests.browser.conftest import needs_chromium, screenshot
from tests.model_server import Reply

pytestmark = needs_chromium

PHONE = {"width": 390, "height": 844}


def _ask(page, portal, text: str) -> str:
    page.goto(f"{portal.url}/chat/")
    page.get_by_role("link", name="IT help desk").first.click()
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")
    page.wait_for_url(re.compile(r".*/chat/c/\d+/$"))
    return page.url


def _check(page, portal, path: str, name: str, found: dict[str, list[str]]) -> None:
    if path:
        assert page.goto(f"{portal.url}{path}").status == 200, path
    page.wait_for_load_state("load")
    found[name] = described(violations(page))
    screenshot(page, f"a11y-{name}")


def test_the_chat_inbox_and_console_have_no_serious_accessibility_violations(portal, browser):
    portal.model.script(
        "demo",
        Reply.say(
            "Full-time employees receive 25 days of paid annual leave per year [1].\n\n"
            "```python\nprint(days_left(employee))\n```"
        ),
        Reply.call("create_ticket", {"title": "VPN down"}),
    )
    member = browser("member")
    answered = _ask(member, portal, "How many days of annual leave do I get?")
    member.locator(".run-body .bubble.answer").first.wait_for()
    member.get_by_role("button", name="Copy Python code").wait_for()
    member.get_by_role("button", name=re.compile("not helpful", re.I)).first.click()
    member.get_by_label(re.compile("What was wrong about this answer")).wait_for()
    _ask(member, portal, "Please open a ticket: my VPN is down")
    member.locator(".card.tool .pill", has_text="awaiting approval").wait_for()
    waiting = Run.objects.get(state="awaiting_approval")

    found: dict[str, list[str]] = {}
    _check(member, portal, "/", "home", found)
    _check(member, portal, answered.removeprefix(portal.url), "chat-answer", found)
    _check(member, portal, f"/runs/{waiting.pk}/", "trace", found)
    _check(member, portal, "/account/tokens/", "tokens", found)
    _check(member, portal, "/chat/search/?q=leave", "search", found)
    _check(member, portal, "/chat/", "chat-home", found)

    reviewer = browser("reviewer")
    _check(reviewer, portal, "/inbox/", "inbox", found)
    reviewer.locator("#inbox-items a", has_text="create_ticket").first.click()
    expect(reviewer.locator("#requested-arguments")).to_contain_text("VPN down")
    _check(reviewer, portal, "", "approval", found)

    admin = browser("admin")
    for path, name in (
        ("/admin/", "console"),
        ("/admin/agents/agent/", "console-agents"),
        ("/admin/agents/agent/1/change/", "console-agent"),
        ("/admin/agents/agent/1/builder/", "console-builder"),
        ("/admin/agents/agent/1/versions/", "console-versions"),
        ("/admin/agents/agent/1/versions/diff/", "console-version-diff"),
        ("/admin/dashboard/", "console-dashboard"),
        ("/admin/agents/knowledgebase/1/change/", "console-knowledge-base"),
        ("/admin/agents/feedback/", "console-feedback"),
        ("/admin/audit/auditevent/", "console-audit"),
    ):
        _check(admin, portal, path, name, found)

    phone = browser("member", **PHONE)
    _check(phone, portal, "/", "home-phone", found)
    _check(phone, portal, answered.removeprefix(portal.url), "chat-phone", found)
    phone_reviewer = browser("reviewer", **PHONE)
    _check(phone_reviewer, portal, "/inbox/", "inbox-phone", found)
    phone_admin = browser("admin", **PHONE)
    _check(phone_admin, portal, "/admin/dashboard/", "console-dashboard-phone", found)

    report = [f"{page}: {line}" for page, lines in found.items() for line in lines]
    assert report == [], "\n".join(report)
    assert portal.console == []
