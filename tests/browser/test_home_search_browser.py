"""The chat as a member starts it: the home page offers the agents, a chat begins from there,
and the question is found again through the search, which opens the conversation at it; at
desktop and phone width, with no console errors."""

import re

from playwright.sync_api import expect

from tests.browser.conftest import needs_chromium, screenshot
from tests.model_server import Reply

pytestmark = needs_chromium

ANSWER = "Badges are collected at the front desk of building A, ground floor [1]."


def test_a_member_starts_a_chat_from_home_and_finds_it_again_by_search(portal, browser):
    portal.model.script("demo", Reply.say(ANSWER))
    page = browser("member")

    agents = page.locator("#home-agents")
    expect(agents.get_by_role("heading", name="IT help desk")).to_be_visible()
    assert "Opens IT tickets" in agents.inner_text()
    agents.get_by_role("link", name="Start a chat with IT help desk").click()
    page.wait_for_url(f"{portal.url}/chat/new/help-desk/")
    box = page.get_by_label("Message")
    box.fill("Where do I collect my badge?")
    box.press("Enter")
    page.wait_for_url(re.compile(r".*/chat/c/\d+/$"))
    answer = page.locator(".run-body .bubble.answer").first
    answer.filter(has_text="front desk of building A").wait_for()
    run_id = page.locator("article.run").first.get_attribute("data-run")

    page.get_by_role("searchbox", name="Search your conversations").fill("badge front desk")
    page.get_by_role("searchbox", name="Search your conversations").press("Enter")
    page.wait_for_url(re.compile(r".*/chat/search/\?q=badge\+front\+desk$"))
    hits = page.locator("#search-results li.hit")
    expect(hits).to_have_count(1)
    expect(hits.locator("mark").first).to_have_text(re.compile("badge", re.I))
    assert "IT help desk" in hits.inner_text()
    assert "Where do I collect my <mark>badge</mark>?" in hits.inner_html()
    screenshot(page, "search-results")
    hits.get_by_role("link").click()
    page.wait_for_url(re.compile(rf".*/chat/c/\d+/#run-{run_id}$"))
    expect(page.locator(f"#run-{run_id} .run-body .bubble.answer")).to_contain_text("building A")
    assert page.evaluate("location.hash") == f"#run-{run_id}"
    page.goto(f"{portal.url}/")
    expect(page.locator("#home-conversations")).to_contain_text("Where do I collect my badge?")
    screenshot(page, "home")

    phone = browser("member", width=390, height=844)
    expect(phone.get_by_role("link", name="Start a chat with IT help desk")).to_be_visible()
    expect(phone.locator("#home-conversations")).to_contain_text("Where do I collect my badge?")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the home page scrolls sideways on a phone ({width}px)"
    screenshot(phone, "home-phone")
    phone.get_by_role("searchbox", name="Search your conversations").fill("badge")
    phone.get_by_role("button", name="Search").click()
    expect(phone.locator("#search-results li.hit")).to_have_count(1)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the results scroll sideways on a phone ({width}px)"
    screenshot(phone, "search-results-phone")
    assert portal.console == []
