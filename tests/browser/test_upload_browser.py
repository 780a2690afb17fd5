"""A file attached in the chat, in a real browser against the real stack (tests/browser/
conftest.py): a member attaches a small text file to a new conversation, watches it become
ready without reloading (the worker reads it), asks about it and gets an answer citing it by
its name; the same conversation at phone size; no console errors."""

import re

from playwright.sync_api import expect

from tests.browser.conftest import needs_chromium, screenshot
from tests.model_server import Reply

pytestmark = needs_chromium

HERON = (
    b"Project Heron\n\n"
    b"Project Heron launches on 14 March. Its beta is code-named Kingfisher and opens to "
    b"the sales team two weeks earlier."
)
ANSWER = "Project Heron launches on 14 March [1]."


def test_a_member_attaches_a_file_sees_it_ready_and_gets_an_answer_citing_it(portal, browser):
    portal.model.script("demo", Reply.say(ANSWER))
    page = browser("member")
    page.goto(f"{portal.url}/chat/")
    page.get_by_role("link", name="IT help desk").click()

    # Choosing the file attaches it: the first file starts the conversation.
    page.get_by_label("Attach a file").set_input_files(
        files=[{"name": "heron.txt", "mimeType": "text/plain", "buffer": HERON}]
    )
    page.wait_for_url(re.compile(r".*/chat/c/\d+/$"))
    row = page.locator("#files .file", has_text="heron.txt")
    # Queued, then ingesting, then ready, as the worker gets to it: the page follows alone.
    expect(row.locator(".pill")).to_have_text(re.compile("queued|ingesting|ready"))
    expect(row.locator(".pill")).to_have_text("ready")
    expect(row).to_contain_text("1 passage")

    box = page.get_by_label("Message")
    box.fill("When does Project Heron launch?")
    box.press("Enter")
    answer = page.locator(".run-body .bubble.answer").first
    answer.filter(has_text="14 March").wait_for()
    citation = page.locator("details", has_text="heron.txt")
    expect(citation).to_have_count(1)
    # The passage's text, whether or not a refresh of the run's part has closed it again.
    expect(citation.locator("blockquote")).to_contain_text("Kingfisher")
    # The model was given the file's passage, numbered, among the handbook's.
    sent = str(portal.model.requests["demo"][-1]["messages"])
    assert "[1]" in sent
    assert "Kingfisher" in sent
    screenshot(page, "chat-upload")

    phone = browser("member", width=390, height=844)
    phone.goto(page.url)
    expect(phone.locator("#files .file", has_text="heron.txt").locator(".pill")).to_have_text(
        "ready"
    )
    expect(phone.locator("details", has_text="heron.txt")).to_have_count(1)
    expect(phone.get_by_label("Attach a file")).to_be_visible()
    screenshot(phone, "chat-upload-phone")
    assert portal.console == []
