"""Feedback, regenerate and stop in a real browser (tests/browser/conftest.py): a member rates
a handbook answer down with a comment, asks again and watches the new answer stream in, asks
once more and stops it; the governance admin (the agent's owner) reads the comment on the
run's trace and in the admin. Desktop and phone width; no console errors anywhere."""

import re
import threading

from playwright.sync_api import expect

from agents.models import Feedback, Run
from tests.browser.conftest import needs_chromium, screenshot
from tests.browser.test_portal_browser import LEAVE, ask
from tests.model_server import Reply

pytestmark = needs_chromium

COMMENT = "I work part-time: how many days do I get?"


def test_a_member_rates_down_regenerates_and_stops_and_the_owner_reads_why(portal, browser):
    words = LEAVE.split(" ")
    halfway = threading.Event()  # the regenerated answer pauses after three words
    held = threading.Event()  # the third answer pauses after two, while it is stopped
    portal.model.script(
        "demo",
        Reply.say(LEAVE),
        Reply.say(LEAVE, pace=0.05, gate=halfway, gate_after=3),
        Reply.say(LEAVE, pace=0.05, gate=held, gate_after=2),
    )
    member = browser("member")
    ask(member, portal, "How many days of annual leave do I get?")
    runs = member.locator("#history article.run")
    first = runs.nth(0)
    first.locator(".run-body .bubble.answer").wait_for()

    # Thumbs down: recorded, pressed, and the comment box opens with the keyboard in it.
    first.get_by_role("button", name="Not helpful").click()
    expect(first.get_by_role("button", name="Not helpful")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(first.get_by_role("button", name="Helpful", exact=True)).to_have_attribute(
        "aria-pressed", "false"
    )
    box = first.get_by_label(re.compile("What was wrong about this answer"))
    expect(box).to_be_focused()
    box.fill(COMMENT)
    first.get_by_role("button", name="Save comment").click()
    expect(first.locator("[data-feedback-note]")).to_have_text("Rated not helpful, with a comment")

    # Regenerate: a new run at the end, streaming; only the latest run offers it.
    first.get_by_role("button", name="Regenerate").click()
    second = runs.nth(1)
    expect(second.locator("[data-stream]")).to_have_text(" ".join(words[:3]))
    expect(first.get_by_role("button", name="Regenerate")).to_be_hidden()
    halfway.set()
    expect(second.locator(".run-body .bubble.answer")).to_have_text(LEAVE)
    expect(second.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(second.get_by_role("button", name="Not helpful")).to_have_attribute(
        "aria-pressed", "false"
    )
    screenshot(member, "feedback-chat")

    # Regenerate again, and stop it while it writes: the run shows it stopped.
    second.get_by_role("button", name="Regenerate").click()
    third = runs.nth(2)
    expect(third.locator("[data-stream]")).to_have_text(" ".join(words[:2]))
    third.get_by_role("button", name="Stop").click()
    expect(third.get_by_role("button", name="Stopping…")).to_be_visible()
    held.set()
    expect(third.locator("[data-state]")).to_have_text("Stopped")
    expect(third.locator(".bubble.problem")).to_have_text("Stopped: cancelled by request")
    expect(third.get_by_role("button", name="Not helpful")).to_have_count(0)  # nothing to rate
    expect(third.get_by_role("button", name="Regenerate")).to_be_visible()

    asked = list(Run.objects.order_by("pk").values_list("input", "state", "conversation_id"))
    assert [(i, s) for i, s, _ in asked] == [
        ("How many days of annual leave do I get?", "succeeded"),
        ("How many days of annual leave do I get?", "succeeded"),
        ("How many days of annual leave do I get?", "cancelled"),
    ]
    assert len({c for _, _, c in asked}) == 1  # one conversation
    rated = Feedback.objects.get()
    assert (rated.run_id, rated.author.username, rated.rating, rated.comment) == (
        Run.objects.order_by("pk").first().pk,
        "member",
        "down",
        COMMENT,
    )

    phone = browser("member", width=390, height=844)
    phone.goto(f"{portal.url}/chat/c/{asked[0][2]}/")
    expect(phone.locator("[data-feedback-note]")).to_have_text("Rated not helpful, with a comment")
    overflow = phone.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    screenshot(phone, "feedback-chat-phone")

    # The agent's owner (the governance admin may change every agent) reads why.
    admin = browser("admin")
    admin.goto(f"{portal.url}/runs/{rated.run_id}/")
    feedback = admin.get_by_role("region", name="Feedback on the answer")
    expect(feedback).to_contain_text("Not helpful from member")
    expect(feedback.locator("blockquote")).to_have_text(COMMENT)
    screenshot(admin, "feedback-trace")
    admin.goto(f"{portal.url}/admin/agents/feedback/")
    row = admin.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(COMMENT)
    expect(row).to_contain_text("Not helpful")
    screenshot(admin, "feedback-admin")
    assert portal.console == []
