"""The chat pages over HTTP: which agents and conversations one sees, sending a message, the
run's part as the page fetches it, and what an outsider gets (nothing)."""

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Conversation, Run, RunStep
from agents.orchestrator import run_execute
from agents.services import run_start
from governance.approvals import approval_decide
from governance.models import ApprovalRequest
from tests.model_server import Reply
from tests.personas import parked, resume
from tools.models import Tool

pytestmark = pytest.mark.django_db
JSON = {"HTTP_ACCEPT": "application/json"}


def send(client, agent, text, conversation=None):
    data = {"agent": agent.pk, "text": text}
    if conversation is not None:
        data["conversation"] = conversation.pk
    return client.post("/chat/send/", data, **JSON)


def test_the_chat_offers_only_the_agents_one_may_use(client, people, help_desk):
    client.force_login(people.member)
    assert help_desk.name in client.get("/chat/").content.decode()
    assert client.get(f"/chat/new/{help_desk.slug}/").status_code == 200

    client.force_login(people.outsider)
    assert help_desk.name not in client.get("/chat/").content.decode()
    assert client.get(f"/chat/new/{help_desk.slug}/").status_code == 404


def test_a_message_starts_a_streaming_run_in_a_new_conversation(client, people, help_desk):
    client.force_login(people.member)

    response = send(client, help_desk, "My VPN is down")

    assert response.status_code == 201
    body = response.json()
    run = Run.objects.get(pk=body["run"])
    assert (run.input, run.actor, run.stream, run.state) == (
        "My VPN is down",
        people.member,
        True,
        "queued",
    )
    assert run.conversation.title == "My VPN is down"
    assert body["url"] == f"/chat/c/{run.conversation_id}/"
    page = client.get(body["url"]).content.decode()
    assert f'data-conversation="{run.conversation_id}"' in page
    assert f'id="run-{run.pk}"' in page


def test_a_refused_message_comes_back_with_its_text_and_leaves_nothing(client, people, help_desk):
    client.force_login(people.outsider)  # may not use the agent

    refused = send(client, help_desk, "Open a ticket please")

    assert refused.status_code == 404
    assert refused["Content-Type"] == "application/problem+json"
    assert refused.json() | {"instance": None} == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no such agent",
        "instance": None,
        "text": "Open a ticket please",
    }
    client.force_login(people.member)
    empty = send(client, help_desk, "   ")
    assert empty.status_code == 400
    assert empty.json()["detail"] == "the message is empty"
    nul = send(client, help_desk, "a\x00b")
    assert nul.status_code == 400
    assert nul.json()["detail"] == "the message contains a NUL character, which cannot be kept"
    assert not Conversation.objects.exists()
    assert not Run.objects.exists()


def test_a_plain_form_post_redirects_and_a_refusal_says_why(client, people, help_desk):
    client.force_login(people.member)
    sent = client.post("/chat/send/", {"agent": help_desk.pk, "text": "hello"})
    assert sent.status_code == 302
    assert sent["Location"].startswith("/chat/c/")

    back = f"/chat/new/{help_desk.slug}/"
    too_long = "x" * 20_001
    refused = client.post(
        "/chat/send/", {"agent": help_desk.pk, "text": too_long}, HTTP_REFERER=back, follow=True
    )
    assert refused.redirect_chain == [(back, 302)]
    page = refused.content.decode()
    assert "The message is longer than 20000 characters" in page
    assert f">{too_long}</textarea>" in page  # nothing typed is lost


def test_an_outsider_can_neither_read_nor_stop_another_users_run(client, people, help_desk, server):
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    run = run_start(agent=help_desk, conversation=conversation, actor=people.member, input="x")
    client.force_login(people.outsider)

    for url in (
        f"/chat/c/{conversation.pk}/",
        f"/chat/runs/{run.pk}/",
        f"/runs/{run.pk}/",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/chat/runs/{run.pk}/stop/").status_code == 404
    assert (
        client.post(
            "/chat/send/",
            {"agent": help_desk.pk, "text": "hi", "conversation": conversation.pk},
            **JSON,
        ).status_code
        == 404
    )
    run.refresh_from_db()
    assert run.cancel_requested is False
    assert Run.objects.filter(conversation=conversation).count() == 1
    client.force_login(people.member)
    assert client.post(f"/chat/runs/{run.pk}/stop/", **JSON).status_code == 202
    run.refresh_from_db()
    assert run.state == "cancelled"


def test_a_tool_call_card_goes_from_awaiting_approval_to_done(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    client.force_login(people.member)

    waiting = client.get(f"/chat/runs/{run.pk}/").content.decode()
    assert "status-awaiting-approval" in waiting
    assert "Waiting for a reviewer to approve" in waiting
    assert "&quot;title&quot;: &quot;VPN down&quot;" in waiting

    request = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=True)
    resume(run)

    done = client.get(f"/chat/runs/{run.pk}/").content.decode()
    assert "status-done" in done
    assert "Ticket opened for you." in done
    assert 'data-final="1"' in done


def test_a_decided_call_says_so_before_the_run_moves_on(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(approval_id=request.pk, decided_by=people.reviewer, approve=False)
    client.force_login(people.member)  # no worker has taken the run up again yet

    page = client.get(f"/chat/runs/{run.pk}/").content.decode()

    assert "status-refused" in page
    assert "rejected by a reviewer" in page
    assert "approved" not in page


def test_a_rejected_call_says_so_and_why(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(
        approval_id=request.pk, decided_by=people.reviewer, approve=False, comment="not today"
    )
    resume(run)
    client.force_login(people.member)

    page = client.get(f"/chat/runs/{run.pk}/").content.decode()

    assert "status-refused" in page
    assert "Refused: a reviewer rejected the call to create_ticket (not today)" in page


def test_model_output_is_sanitised_markdown_under_a_content_security_policy(
    client, people, assistant, server
):
    server.script(
        "primary",
        Reply.say(
            "**Done** <script>alert(1)</script> ![x](https://evil.example/p.png) "
            "[click](javascript:alert(2)) <img src=x onerror=alert(3)>"
        ),
    )
    conversation = Conversation.objects.create(owner=people.member, agent=assistant)
    run = run_start(agent=assistant, conversation=conversation, actor=people.member, input="hi")
    run_execute(run_id=run.pk, holder="test")
    client.force_login(people.member)

    response = client.get(f"/chat/c/{conversation.pk}/")
    page = response.content.decode()
    answer = page.split('class="bubble answer">', 1)[1].split("</div>", 1)[0]

    assert "<strong>Done</strong>" in answer
    assert "<script" not in answer
    assert "<img" not in answer
    assert 'href="javascript' not in answer  # left as text, not a link
    assert 'src="https://evil.example' not in answer  # no remote image loads
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "img-src 'self' data:" in policy
    assert "default-src 'self'" in policy


def _step(run, index, kind, output, **extra):
    now = timezone.now()
    return RunStep.objects.create(
        run=run, index=index, kind=kind, output=output, started_at=now, finished_at=now, **extra
    )


def test_a_citation_opens_its_passage(client, people, help_desk):
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    run = Run.objects.create(
        agent=help_desk,
        conversation=conversation,
        actor=people.member,
        input="leave?",
        state="succeeded",
        answer="You get 25 days [1].",
        citations=[
            {
                "n": 1,
                "title": "Leave policy",
                "position": 2,
                "document": 1,
                "chunk": 9,
                "knowledge_base": 1,
            }
        ],
    )
    passage = {"n": 1, "title": "Leave policy", "position": 2, "text": "25 days of paid leave."}
    _step(run, 0, "retrieval", {"passages": [passage]})
    client.force_login(people.member)

    page = client.get(f"/chat/c/{conversation.pk}/").content.decode()

    assert f'<a href="#run-{run.pk}-cite-1" rel="noopener noreferrer nofollow">[1]</a>' in page
    assert f'<details id="run-{run.pk}-cite-1">' in page
    assert "[1] Leave policy, passage 3" in page
    assert "25 days of paid leave." in page


def test_a_write_only_argument_is_masked_on_the_card(client, people, help_desk):
    Tool.objects.create(
        name=f"reset_{uuid.uuid4().hex[:6]}",
        description="Reset a password.",
        kind="http",
        parameters={
            "type": "object",
            "properties": {
                "user": {"type": "string"},
                "password": {"type": "string", "writeOnly": True},
            },
        },
        config={"method": "POST", "url": "https://idp.example.com/reset"},
    )
    tool = Tool.objects.latest("pk")
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    run = Run.objects.create(
        agent=help_desk,
        conversation=conversation,
        actor=people.member,
        input="reset",
        state="running",
    )
    arguments = json.dumps({"user": "mia", "password": "hunter2-secret"})
    _step(
        run, 0, "model", {"tool_calls": [{"id": "c1", "name": tool.name, "arguments": arguments}]}
    )
    client.force_login(people.member)

    page = client.get(f"/chat/runs/{run.pk}/").content.decode()

    assert "hunter2-secret" not in page
    assert "&quot;password&quot;: &quot;••••••&quot;" in page
    assert "&quot;user&quot;: &quot;mia&quot;" in page
    assert "status-running" in page


def test_the_conversation_page_costs_the_same_queries_for_one_run_or_many(
    client, people, help_desk
):
    """Each run with a retrieval, a tool call, its result and a cited answer."""
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    client.force_login(people.member)
    passage = {"n": 1, "title": "FAQ", "position": 0, "text": "Restart it.", "knowledge_base": 1}

    def add_run(i):
        run = Run.objects.create(
            agent=help_desk,
            conversation=conversation,
            actor=people.member,
            input=f"q{i}",
            state="succeeded",
            answer=f"a{i} [1]",
            citations=[{**passage, "document": 1, "chunk": 1}],
        )
        call = {"id": f"c{i}", "name": "create_ticket", "arguments": '{"title": "t"}'}
        _step(run, 0, "retrieval", {"passages": [passage]})
        _step(run, 1, "model", {"content": "", "tool_calls": [call]})
        RunStep.objects.create(
            run=run,
            index=2,
            kind="tool",
            input={"call": call},
            output={"result": {"ticket": i}},
            started_at=timezone.now(),
            finished_at=timezone.now(),
        )
        _step(run, 3, "model", {"content": f"a{i} [1]", "tool_calls": []})

    def cost() -> int:
        with CaptureQueriesContext(connection) as queries:
            page = client.get(f"/chat/c/{conversation.pk}/").content.decode()
        assert "status-done" in page
        assert "Restart it." in page
        return len(queries)

    add_run(0)
    one = cost()
    for i in range(1, 6):
        add_run(i)
    assert cost() == one


def test_confidence_tokens_cost_and_budget_use_are_shown(client, people, help_desk):
    from decimal import Decimal

    from governance.budgets import budget_reserve, budget_settle
    from governance.models import Budget

    budget = Budget.objects.create(name="Monthly", user=people.member, max_tokens=1000)
    budget_reserve(budget_ids=[budget.pk], key="k", tokens=10, cost=Decimal(0))
    budget_settle(key="k", tokens=250, cost=Decimal(0))
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    Run.objects.create(
        agent=help_desk,
        conversation=conversation,
        actor=people.member,
        input="q",
        state="succeeded",
        answer="a",
        confidence=Decimal("0.875"),
        prompt_tokens=100,
        completion_tokens=20,
        cost=Decimal("0.0125"),
    )
    client.force_login(people.member)

    page = client.get(f"/chat/c/{conversation.pk}/").content.decode()

    assert "<span>confidence 0.88</span>" in page
    assert "<span>120 tokens · $0.0125</span>" in page
    assert "Monthly: 25.0% used" in page
