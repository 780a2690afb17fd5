"""The agent builder in a real browser (agents/builder_admin.py): a governance admin opens it from
the demo agent's change page, sees its prompt, route, tools and handbook, changes the prompt
(told it is unsaved until saved), saves it, and asks the test chat a handbook question: the
answer streams in with its citation, the model was sent the new prompt, and a tool call waits
for a reviewer as it would for anyone. The same page at phone width."""

import re

from auditlog.models import LogEntry as FieldHistory
from playwright.sync_api import expect

from agents.models import Agent, Run
from tests.browser.conftest import needs_chromium, screenshot
from tests.model_server import Reply

pytestmark = needs_chromium

PROMPT = "You are the IT help desk. Answer in one short paragraph and cite the handbook."
LEAVE = (
    "Full-time employees receive 25 days of paid annual leave per calendar year, plus public "
    "holidays [1]."
)


def test_an_admin_edits_the_prompt_and_the_test_chat_answers_with_it(portal, browser):
    agent = Agent.objects.get(slug="help-desk")
    portal.model.script(
        "demo", Reply.say(LEAVE, pace=0.02), Reply.call("create_ticket", {"title": "VPN down"})
    )
    page = browser("admin")

    page.goto(f"{portal.url}/admin/agents/agent/{agent.pk}/change/")
    page.locator(".object-tools").get_by_role("link", name="Builder").click()
    page.wait_for_url(re.compile(r".*/builder/$"))
    expect(page.get_by_role("heading", name="Builder: IT help desk")).to_be_visible()
    prompt = page.get_by_label("System prompt")
    expect(prompt).to_have_value(agent.system_prompt)
    route = page.locator("#builder-route")
    expect(route.locator("tbody tr")).to_have_text(
        re.compile(r"1\s*openai/scripted\s*any\s*primary")
    )
    tools = page.locator("#builder-tools")
    expect(tools.get_by_label("create_ticket")).to_be_checked()
    expect(tools.locator("li", has_text="create_ticket")).to_contain_text("needs approval")
    expect(page.locator("#builder-knowledge").get_by_label("Employee handbook")).to_be_checked()

    prompt.fill(PROMPT)
    expect(page.locator("#builder-unsaved")).to_be_visible()  # the test chat uses what is saved
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".messagelist")).to_contain_text("Saved (system prompt).")
    expect(page.locator("#builder-unsaved")).to_be_hidden()

    box = page.get_by_label("Test message")
    box.fill("How many days of annual leave do I get?")
    box.press("Enter")
    page.wait_for_url(re.compile(r".*/builder/\?conversation=\d+$"))  # its own conversation
    tested = page.url
    answer = page.locator(".builder-chat .run-body .bubble.answer").first
    answer.filter(has_text="plus public holidays").wait_for()
    assert answer.inner_text() == LEAVE
    citation = page.locator(".builder-chat details", has_text="Leave policy")
    page.locator("a[href*='-cite-1']", has_text="[1]").click()  # opens the passage
    assert citation.evaluate("d => d.open")
    sent = portal.model.requests["demo"][-1]["messages"]
    assert sent[0] == {"role": "system", "content": PROMPT}

    box.fill("Please open a ticket: my VPN is down")
    box.press("Enter")
    card = page.locator(".builder-chat .card.tool", has_text="create_ticket")
    card.locator(".pill", has_text="awaiting approval").wait_for()  # as for any user
    screenshot(page, "agent-builder")
    conversation = tested.rsplit("=", 1)[1]

    phone = browser("admin", width=390, height=844)
    phone.goto(tested)
    expect(phone.locator(".builder-chat .run-body .bubble.answer").first).to_have_text(LEAVE)
    expect(phone.get_by_label("Test message")).to_be_visible()
    screenshot(phone, "agent-builder-phone")

    runs = Run.objects.filter(conversation_id=conversation).order_by("pk")
    assert [(r.actor.username, r.agent_id) for r in runs] == [("admin", agent.pk)] * 2
    assert FieldHistory.objects.get_for_object(agent).filter(actor__username="admin").exists()
    assert portal.console == []
