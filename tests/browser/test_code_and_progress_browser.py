"""Waiting and reading in a real browser (tests/browser/conftest.py): the warming-up notice
while no worker is ready, then gone by itself; a run at work showing its step and its clock; an
answer's code block highlighted, copied to the clipboard with its Copy button; the same answer
at phone width; meanwhile a knowledge base's page following a document being read, without a
reload."""

import re
import threading

from playwright.sync_api import expect

from agents.models import Document
from tests.browser.conftest import needs_chromium, screenshot
from tests.model_server import Reply

pytestmark = needs_chromium

CODE = (
    'def greet(name: str) -> str:\n    return f"<b>Hello {name}</b>"  # [1]\n\n'
    "print(greet('a rather long argument that makes this line wider than a phone screen'))"
)
ANSWER = f"Here is how [1]:\n\n```python\n{CODE}\n```\n\nRun it with Python 3."


def test_an_answer_with_code_is_highlighted_and_copied_while_the_page_shows_progress(
    portal, browser
):
    admin = browser("admin")
    base = Document.objects.filter(knowledge_base__slug="handbook").first().knowledge_base
    total = Document.objects.filter(knowledge_base=base).count() + 1
    admin.goto(f"{portal.url}/admin/agents/knowledgebase/{base.pk}/add-documents/")

    # Warming up: the page asks whether a worker is ready; while the answer is no, it says so.
    page = browser("member")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.url)
    page.route("**/chat/workers/", lambda route: route.fulfill(json={"ready": False}))
    page.goto(f"{portal.url}/chat/")
    notice = page.locator(".warming")
    expect(notice).to_contain_text("Warden is warming up: answers will start when a worker")
    screenshot(page, "chat-warming-up")
    page.unroute("**/chat/workers/")  # the real answer: the portal's worker is ready
    expect(notice.locator("p")).to_have_count(0)  # gone without a reload

    # A run at work: its step and its clock, while the model is held after three chunks.
    held = threading.Event()
    portal.model.script("demo", Reply.say(ANSWER, pace=0.02, gate=held, gate_after=3))
    page.get_by_role("link", name="IT help desk").click()
    box = page.get_by_label("Message")
    box.fill("How do I greet someone in Python?")
    box.press("Enter")
    page.wait_for_url(re.compile(r".*/chat/c/\d+/$"))
    progress = page.locator(".run-progress")
    expect(progress).to_contain_text("Step 2: asking the model, with the passages found")
    # The worker is busy with it (its pool answers no ping meanwhile): ready all the same.
    expect(page.locator(".warming p")).to_have_count(0)
    clock = progress.locator("[data-elapsed-text]")
    first = clock.inner_text()
    expect(clock).not_to_have_text(first)  # it counts on between steps
    assert re.fullmatch(r"\d+ s|\d+ min \d\d s", clock.inner_text())
    screenshot(page, "chat-run-progress")

    # Meanwhile, an admin adds a document to the handbook: the worker (one process, busy with
    # the run) reads it after the run; the knowledge base's page follows without a reload.
    admin.set_input_files(
        "input[type=file]",
        files=[
            {"name": "greeting.md", "mimeType": "text/markdown", "buffer": b"# Greeting\n\nHi."}
        ],
    )
    admin.get_by_role("button", name="Add").click()
    summary = admin.locator("#kb-progress [data-summary]")
    expect(summary).to_have_text(
        f"{total - 1} of {total} documents ready; 1 waiting to be read or being read."
    )
    screenshot(admin, "knowledge-base-reading")
    held.set()
    expect(summary).to_have_text(f"{total} of {total} documents ready.")
    expect(admin.locator("#kb-progress tr", has_text="Greeting")).to_contain_text("ready")
    screenshot(admin, "knowledge-base-ready")

    # The answer: its code highlighted, its citation a link only outside the code.
    block = page.locator(".run-body .code-block")
    expect(block).to_have_count(1)
    expect(progress).to_have_count(0)  # finished: no progress line
    expect(block.locator(".code-lang")).to_have_text("Python")
    assert block.locator("span.k", has_text="def").count() == 1
    assert block.locator("span.nf", has_text="greet").count() == 1
    assert block.locator("a").count() == 0
    assert page.locator(".run-body .bubble.answer > p a", has_text="[1]").count() == 1
    assert block.locator("b").count() == 0  # the markup in the code is text
    colour = block.locator("span.k").first.evaluate("e => getComputedStyle(e).color")
    assert colour == "rgb(207, 34, 46)"  # code.css is loaded

    # Copy: the code as plain text on the clipboard; the button says so, then is ready again.
    expect(block.get_by_role("button", name="Copy Python code")).to_have_count(1)
    copy = block.locator("button.code-copy")
    copy.click()
    expect(copy).to_have_text(re.compile(r"^Copied"))
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    expect(page.get_by_role("status").filter(has_text="copied to the clipboard")).to_have_count(1)
    expect(copy).to_have_text(re.compile(r"^Copy "))
    # By keyboard too: the button is reachable and Enter copies.
    page.evaluate("navigator.clipboard.writeText('')")
    copy.focus()
    page.keyboard.press("Enter")
    expect(copy).to_have_text(re.compile(r"^Copied"))
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    screenshot(page, "chat-code-block")

    # At phone width the long line scrolls inside its block, not the page.
    phone = browser("member", width=390, height=844)
    phone.goto(page.url)
    pre = phone.locator(".run-body .code-block pre")
    expect(pre).to_be_visible()
    expect(phone.locator(".code-copy")).to_have_count(1)
    assert pre.evaluate("e => e.scrollWidth > e.clientWidth")
    box = phone.locator(".run-body .code-block").bounding_box()
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 390
    screenshot(phone, "chat-code-block-phone")

    assert portal.console == []
