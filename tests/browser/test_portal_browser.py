"""Warden's pages in a real browser against the real stack (tests/browser/conftest.py): the
chat streaming a handbook answer, an approval decided in a second browser context, an
outsider refused by URL and by websocket, a reload in the middle of a run, and the admin
console; no console errors anywhere."""

import re
import threading

from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from agents.models import Conversation, Run
from tests.browser.conftest import needs_chromium, screenshot
from tests.model_server import Reply

pytestmark = needs_chromium

LEAVE = (
    "Full-time employees receive 25 days of paid annual leave per calendar year, plus public "
    "holidays [1]."
)


def ask(page, portal, text: str) -> None:
    page.goto(f"{portal.url}/chat/")
    page.get_by_role("link", name="IT help desk").click()
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")  # Enter sends
    page.wait_for_url(re.compile(r".*/chat/c/\d+/$"))


def test_a_member_sees_a_handbook_answer_stream_in_with_its_citation(portal, browser):
    words = LEAVE.split(" ")
    halfway = threading.Event()  # the model stops after three words until the test has looked
    portal.model.script("demo", Reply.say(LEAVE, pace=0.05, gate=halfway, gate_after=3))
    page = browser("member")

    ask(page, portal, "How many days of annual leave do I get?")

    stream = page.locator("[data-stream]")
    expect(stream).to_have_text(" ".join(words[:3]))  # part of it, as it is written
    assert page.locator(".run-body .bubble.answer").count() == 0
    halfway.set()
    answer = page.locator(".run-body .bubble.answer").first
    answer.filter(has_text="plus public holidays").wait_for()
    assert answer.inner_text() == LEAVE
    assert stream.is_hidden()
    # Keyboard: the conversation opens with the focus in the box, and Tab reaches Send next.
    assert page.evaluate("document.activeElement.id") == "message"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Send"
    citation = page.locator("details", has_text="Leave policy")
    assert citation.count() == 1
    page.locator("a[href*='-cite-1']", has_text="[1]").click()  # opens the passage
    assert citation.evaluate("d => d.open")
    assert "25 days" in citation.locator("blockquote").inner_text()
    assert "Answered" in page.locator(".run-meta").inner_text()
    # The model was given the handbook's passages (real retrieval) and asked to cite them.
    sent = portal.model.requests["demo"][-1]["messages"]
    assert any("[1]" in str(m.get("content")) and "Leave" in str(m) for m in sent)
    screenshot(page, "chat")
    assert portal.console == []


def _approval_flow(portal, browser, *, approve: bool):
    portal.model.script(
        "demo",
        Reply.call("create_ticket", {"title": "VPN down"}),
        Reply.say("Ticket 1 is open for you." if approve else "unused"),
    )
    member = browser("member")
    reviewer = browser("reviewer")
    reviewer.goto(f"{portal.url}/inbox/")
    assert reviewer.locator("[data-inbox-count]").inner_text() == "0"

    ask(member, portal, "Please open a ticket: my VPN is down")
    card = member.locator(".card.tool", has_text="create_ticket")
    card.locator(".pill", has_text="awaiting approval").wait_for()
    assert '"title": "VPN down"' in card.locator(".arguments").inner_text()

    row = reviewer.locator("#inbox-items tr[data-kind=approval]")
    row.wait_for()  # arrived over the websocket, no reload
    assert reviewer.locator("[data-inbox-count]").inner_text() == "1"
    assert "the tool changes a system (risk: write)" in row.inner_text()
    screenshot(reviewer, "inbox" if approve else "inbox-before-reject")
    row.get_by_role("link", name="Run create_ticket").click()
    assert '"title": "VPN down"' in reviewer.locator("#requested-arguments").inner_text()
    reviewer.get_by_label("Comment").fill("fine" if approve else "not this week")
    reviewer.get_by_role("button", name="Approve" if approve else "Reject").click()
    reviewer.wait_for_url(f"{portal.url}/inbox/")
    return member, card


def test_a_reviewer_approves_in_the_inbox_and_the_member_sees_the_result_live(portal, browser):
    member, card = _approval_flow(portal, browser, approve=True)

    card.locator(".pill", has_text="done").wait_for()
    answer = member.locator(".run-body .bubble.answer").first
    answer.filter(has_text="Ticket 1 is open for you.").wait_for()
    from tools.models import DemoTicket

    ticket = DemoTicket.objects.get(title="VPN down")  # the approved call did run, once
    assert f'"ticket": {ticket.pk}' in card.locator(".detail").inner_text()  # its result
    screenshot(member, "chat-approved")
    assert portal.console == []


def test_a_reviewer_rejects_and_the_member_reads_why(portal, browser):
    member, card = _approval_flow(portal, browser, approve=False)

    card.locator(".pill", has_text="refused").wait_for()
    problem = member.locator(".bubble.problem")
    problem.wait_for()
    assert "a reviewer rejected the call to create_ticket (not this week)" in problem.inner_text()
    assert portal.console == []


def test_an_outsider_cannot_open_another_users_conversation(portal, browser):
    User = get_user_model()
    from agents.models import Agent

    User.objects.create_user("olga", password="olga-password-1")
    portal.passwords["olga"] = "olga-password-1"
    member = User.objects.get(username="member")
    agent = Agent.objects.get(slug="help-desk")
    conversation = Conversation.objects.create(owner=member, agent=agent, title="Salary question")
    run = Run.objects.create(
        agent=agent,
        conversation=conversation,
        actor=member,
        input="What is my salary?",
        state="succeeded",
        answer="secret answer",
    )
    page = browser("olga")

    for path in (f"/chat/c/{conversation.pk}/", f"/chat/runs/{run.pk}/", f"/runs/{run.pk}/"):
        response = page.goto(f"{portal.url}{path}")
        assert response.status == 404, path
        assert "secret answer" not in page.content()
        assert "Salary question" not in page.content()
    page.goto(f"{portal.url}/chat/")
    codes = page.evaluate(
        """async ([conversation, run]) => {
            const attempt = (frame) => new Promise((resolve) => {
                const socket = new WebSocket(`ws://${location.host}/ws/`);
                const seen = [];
                socket.onopen = () => socket.send(JSON.stringify(frame));
                socket.onmessage = (m) => seen.push(JSON.parse(m.data));
                socket.onclose = (e) => resolve({code: e.code, seen});
            });
            return [
                await attempt({type: "subscribe", conversation}),
                await attempt({type: "subscribe", run}),
            ];
        }""",
        [conversation.pk, run.pk],
    )
    assert [c["code"] for c in codes] == [4403, 4403]
    assert [c["seen"] for c in codes] == [[], []]


def test_a_reload_in_the_middle_of_a_run_resumes_the_stream(portal, browser):
    text = " ".join(f"word{i}" for i in range(40)) + "."
    paused = threading.Event()  # the model waits after six words while the page reloads
    portal.model.script("demo", Reply.say(text, pace=0.05, gate=paused, gate_after=6))
    page = browser("member")
    ask(page, portal, "Tell me a long story")
    stream = page.locator("[data-stream]")
    expect(stream).to_have_text("word0 word1 word2 word3 word4 word5")

    page.reload()

    # What was written before the reload is back, once, from the replay...
    expect(stream).to_have_text("word0 word1 word2 word3 word4 word5")
    # ...and the rest follows live: the page records every text the stream shows (a refresh
    # replaces the stream's element, so the whole conversation is watched).
    page.evaluate(
        """() => {
            window.shown = [];
            new MutationObserver(() => {
                const text = document.querySelector('[data-stream]')?.textContent;
                if (text) window.shown.push(text);
            }).observe(document.getElementById('history'), {
                subtree: true, childList: true, characterData: true,
            });
        }"""
    )
    paused.set()
    answer = page.locator(".run-body .bubble.answer")
    answer.wait_for()
    seen = page.evaluate("window.shown")
    assert all(text.startswith(shown) for shown in seen)  # nothing lost, nothing twice
    assert any(len(shown) > len("word0 word1 word2 word3 word4 word5") for shown in seen)
    assert answer.inner_text() == text
    assert portal.console == []


def _history() -> None:
    """Two weeks of runs for the dashboard to draw."""
    from datetime import timedelta
    from decimal import Decimal

    from django.contrib.auth.models import Group
    from django.utils import timezone

    from agents.models import Agent

    member = get_user_model().objects.get(username="member")
    member.groups.add(Group.objects.create(name="Field sales"))
    agent = Agent.objects.get(slug="help-desk")
    conversation = Conversation.objects.create(owner=member, agent=agent)
    now = timezone.now()
    for day in range(14):
        for n in range(day % 5 + 1):
            run = Run.objects.create(
                agent=agent,
                conversation=conversation,
                actor=member,
                input="q",
                state="failed" if n == 3 else "succeeded",
                cost=Decimal("0.0125") * (n + 1),
                prompt_tokens=120,
            )
            Run.objects.filter(pk=run.pk).update(created_at=now - timedelta(days=day))


def test_the_admin_console_and_the_pages_at_phone_width(portal, browser):
    _history()
    admin = browser("admin")
    admin.goto(f"{portal.url}/admin/")
    admin.get_by_role("heading", name="The last 14 days").wait_for()
    assert admin.locator("svg.chart").count() == 3
    assert admin.locator("[data-figure=runs]").inner_text() == "40"
    screenshot(admin, "admin-dashboard")
    traced = Run.objects.latest("pk")
    admin.goto(f"{portal.url}/runs/{traced.pk}/")
    admin.get_by_role("heading", name=f"Run {traced.pk}: IT help desk").wait_for()
    for path in (
        "/admin/agents/agent/",
        "/admin/tools/tool/",
        "/admin/tools/mcpserver/",
        "/admin/agents/modelroute/",
        "/admin/governance/budget/",
        "/admin/audit/auditevent/",
    ):
        assert admin.goto(f"{portal.url}{path}").status == 200, path
    phone = browser("member", width=390, height=844)
    for path in ("/", "/chat/", "/inbox/", f"/chat/c/{Conversation.objects.get().pk}/"):
        phone.goto(f"{portal.url}{path}")
        overflow = phone.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, path
    screenshot(phone, "chat-phone")
    assert portal.console == []
