"""One mapping for the front door's refusals (integrations.api.problems.ANSWERS): the REST API, the
OpenAI-compatible endpoint and the chat answer each kind with the same status and words, the
API's problem type on both API surfaces, OpenAI's error type and code beside it, and nothing
started on any of them."""

import json

import pytest
from prometheus_client import REGISTRY

from agents.models import Conversation, Run
from agents.services import RunError
from integrations.api.problems import ANSWERS
from integrations.tokens import token_create

pytestmark = pytest.mark.django_db


def _kinds(kind=RunError):
    return [kind, *(k for sub in kind.__subclasses__() for k in _kinds(sub))]


def test_every_kind_of_refusal_has_an_answer():
    # An evaluation that cannot start (no cases) is refused too, outside a run's kinds.
    assert {kind.code for kind in _kinds()} | {"not_found", "evaluation_refused"} == set(ANSWERS)


def pat(user) -> dict:
    _, secret = token_create(user=user, name="test", scopes=["agents:run"], days=1)
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def ask_everywhere(client, user, agent, text, conversation=None):
    """The same request through the three doors: (REST, OpenAI, chat) responses."""
    auth = pat(user)
    body = {"input": text} | ({"conversation": conversation} if conversation else {})
    rest = client.post(
        f"/api/v1/agents/{agent.slug}/runs",
        json.dumps(body),
        content_type="application/json",
        **auth,
    )
    asked = {"model": f"agent:{agent.slug}", "messages": [{"role": "user", "content": text}]}
    if conversation:
        asked["conversation"] = conversation
    openai = client.post(
        "/v1/chat/completions", json.dumps(asked), content_type="application/json", **auth
    )
    client.force_login(user)
    form = {"agent": agent.pk, "text": text} | (
        {"conversation": conversation} if conversation else {}
    )
    chat = client.post("/chat/send/", form, HTTP_ACCEPT="application/json")
    client.logout()
    return rest, openai, chat


def test_a_policy_refusal_answers_alike_on_every_surface(client, people, assistant):
    assistant.enabled = False
    assistant.save(update_fields=["enabled"])

    rest, openai, chat = ask_everywhere(client, people.member, assistant, "hi")

    detail = "the agent Assistant is disabled"
    for response in (rest, openai, chat):
        assert (response.status_code, response.json()["detail"]) == (403, detail)
    for response in (rest, openai):
        assert response.json()["type"] == "/api/problems/policy-denied"
        assert response.json()["reasons"] == ["agent.disabled"]
    assert openai.json()["error"] == {
        "message": detail,
        "type": "permission_error",
        "param": None,
        "code": "policy_denied",
    }
    assert chat.json()["type"] == "about:blank"  # the page's script reads `detail` only
    assert not Run.objects.exists()
    assert not Conversation.objects.exists()


def test_an_empty_message_answers_alike_on_every_surface(client, people, assistant):
    rest, openai, chat = ask_everywhere(client, people.member, assistant, "  ")

    for response in (rest, openai, chat):
        assert (response.status_code, response.json()["detail"]) == (400, "the message is empty")
    assert rest.json()["type"] == openai.json()["type"] == "/api/problems/run-refused"
    assert openai.json()["error"] == {
        "message": "the message is empty",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "invalid_request",
    }
    assert not Run.objects.exists()
    assert not Conversation.objects.exists()


def test_ones_conversation_with_another_agent_is_not_found_on_every_surface(
    client, people, assistant, help_desk
):
    theirs = Conversation.objects.create(owner=people.member, agent=help_desk, title="VPN")

    rest, openai, chat = ask_everywhere(client, people.member, assistant, "hi", theirs.pk)

    for response in (rest, openai, chat):
        assert (response.status_code, response.json()["detail"]) == (404, "no such conversation")
    assert openai.json()["error"]["code"] == "conversation_not_found"
    assert not Run.objects.exists()
    assert list(Conversation.objects.all()) == [theirs]


def test_a_rate_limit_answers_429_with_retry_after_on_every_surface(client, people, assistant):
    assistant.runs_per_user_per_minute = 1
    assistant.save(update_fields=["runs_per_user_per_minute"])
    client.force_login(people.member)
    assert client.post("/chat/send/", {"agent": assistant.pk, "text": "hi"}).status_code == 302
    client.logout()
    refusals = {"limit": "run-rate"}
    before = REGISTRY.get_sample_value("warden_rate_limit_refusals_total", refusals) or 0

    responses = ask_everywhere(client, people.member, assistant, "again")

    for response in responses:
        assert response.status_code == 429
        assert 0 < int(response["Retry-After"]) <= 60
        assert response.json()["detail"].startswith("the agent Assistant takes at most 1 runs")
    assert responses[1].json()["error"]["code"] == "rate_limit_exceeded"
    assert Run.objects.count() == Conversation.objects.count() == 1
    # Counted for the platform team's dashboard, once a refusal (telemetry.metrics).
    after = REGISTRY.get_sample_value("warden_rate_limit_refusals_total", refusals)
    assert after == before + len(responses)
