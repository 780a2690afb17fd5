"""Hostile and odd input to the API: each is a clear problem document (never a 500) and starts
or changes nothing; and the limits on what one account may hold open."""

import base64
import json

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections

from agents.models import Agent, Conversation, Feedback, Run, RunState
from governance.models import ApprovalRequest
from integrations.api.waits import wait_slot_give, wait_slot_take
from integrations.models import PersonalAccessToken
from integrations.tokens import token_create
from tests.personas import parked
from tools.models import Tool

pytestmark = pytest.mark.django_db


def pat(user, scopes=("agents:run", "runs:read", "admin:write")) -> dict:
    _, secret = token_create(user=user, name="t", scopes=list(scopes), days=1)
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def post(client, url, body, **headers):
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.post(url, raw, content_type="application/json", **headers)


@pytest.mark.parametrize("wait", ["\u00b2", "\u0661", "99999999999999999999"])
def test_a_wait_in_other_digits_is_a_400(client, people, assistant, wait):
    url = f"/api/v1/agents/{assistant.slug}/runs?wait={wait}"

    response = post(client, url, {"input": "hi"}, **pat(people.member))

    assert response.status_code == 400
    assert "wait" in response.json()["errors"]
    assert not Run.objects.exists()


@pytest.mark.parametrize("after", ["99999999999999999999-0", "\u0661-\u0660"])
def test_an_event_id_redis_would_not_accept_is_a_400(client, people, assistant, after):
    auth = pat(people.member)
    run_id = post(client, f"/api/v1/agents/{assistant.slug}/runs", {"input": "hi"}, **auth).json()[
        "id"
    ]

    response = client.get(f"/api/v1/runs/{run_id}/events", HTTP_LAST_EVENT_ID=after, **auth)

    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["errors"]


@pytest.mark.parametrize(
    ("model", "content", "param"),
    [
        ("agent:x\u0000", "hi", "model"),
        (None, "hi \\ud800 there", "messages"),  # an unpaired surrogate: JSON, but not text
        (None, "hi \u0000", "messages"),
    ],
)
def test_text_postgresql_cannot_keep_is_a_400_on_the_openai_endpoint(
    client, people, assistant, model, content, param
):
    model = json.dumps(model or f"agent:{assistant.slug}")
    body = f'{{"model": {model}, "messages": [{{"role": "user", "content": "{content}"}}]}}'
    body = body.replace("\u0000", "\\u0000")

    response = post(client, "/v1/chat/completions", body, **pat(people.member))

    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param
    assert not Run.objects.exists()


@pytest.mark.parametrize("role", [["user"], {"user": 1}, 7])
def test_a_role_that_is_not_a_string_is_a_400(client, people, assistant, role):
    body = {"model": f"agent:{assistant.slug}", "messages": [{"role": role, "content": "hi"}]}

    response = post(client, "/v1/chat/completions", body, **pat(people.member))

    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "messages[0]"
    assert not Run.objects.exists()


def test_a_tool_config_with_an_unpaired_surrogate_is_a_400(client, people):
    client.force_login(people.admin)
    body = (
        '{"name": "crm", "kind": "http", "description": "CRM", '
        '"config": {"url": "https://crm.example.com", "headers": {"x": "\\ud800"}}}'
    )
    count = Tool.objects.count()

    response = post(client, "/api/v1/tools", body)

    assert response.status_code == 400, response.content
    assert "config" in response.json()["errors"]
    assert Tool.objects.count() == count


def test_a_body_over_the_limit_is_a_413(client, people, assistant, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = post(
        client, f"/api/v1/agents/{assistant.slug}/runs", {"input": "x" * 2000}, **pat(people.member)
    )

    assert response.status_code == 413
    assert response.json()["type"] == "/api/problems/too-large"
    assert not Run.objects.exists()


def test_one_account_holds_only_so_many_waits_and_streams(client, people, assistant, settings):
    settings.WARDEN_API_MAX_WAITS = 1
    auth = pat(people.member)
    run_id = post(client, f"/api/v1/agents/{assistant.slug}/runs", {"input": "hi"}, **auth).json()[
        "id"
    ]
    wait_slot_take(people.member)  # a wait of theirs elsewhere, still open
    try:
        waiting = post(
            client, f"/api/v1/agents/{assistant.slug}/runs?wait=1", {"input": "x"}, **auth
        )
        streaming = client.get(f"/api/v1/runs/{run_id}/events", **auth)
        completing = post(
            client,
            "/v1/chat/completions",
            {"model": f"agent:{assistant.slug}", "messages": [{"role": "user", "content": "x"}]},
            **auth,
        )
        others = client.get(f"/api/v1/runs/{run_id}", **auth)  # a plain request is not held
    finally:
        wait_slot_give(people.member)

    for refused in (waiting, streaming, completing):
        assert refused.status_code == 429
        assert refused["Retry-After"] == "1"
    assert others.status_code == 200
    assert Run.objects.count() == 1  # the refused ones started nothing
    freed = post(client, f"/api/v1/agents/{assistant.slug}/runs?wait=1", {"input": "y"}, **auth)
    assert freed.status_code == 202  # the slot came back


def server_closes(response) -> None:
    """What the server does at the end of every request, as Django's test client does it (the
    test's database connection stays open)."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def test_a_streams_slot_comes_back_when_the_server_closes_it_once(
    client, people, assistant, settings
):
    settings.WARDEN_API_MAX_WAITS = 1
    auth = pat(people.member)
    run_id = post(client, f"/api/v1/agents/{assistant.slug}/runs", {"input": "hi"}, **auth).json()[
        "id"
    ]
    first = client.get(f"/api/v1/runs/{run_id}/events", **auth)  # not read: the client left
    held = client.get(f"/api/v1/runs/{run_id}/events", **auth)

    server_closes(first)
    server_closes(first)
    again = client.get(f"/api/v1/runs/{run_id}/events", **auth)
    past = client.get(f"/api/v1/runs/{run_id}/events", **auth)
    server_closes(again)

    assert (first.status_code, held.status_code) == (200, 429)
    assert (again.status_code, past.status_code) == (200, 429)  # given back once, not twice


def test_a_failed_run_tells_the_openai_sdk_not_to_retry(client, people, assistant, settings):
    settings.WARDEN_OPENAI_WAIT_SECONDS = 1  # no worker here: it answers that it still runs
    auth = pat(people.member)
    body = {"model": f"agent:{assistant.slug}", "messages": [{"role": "user", "content": "hi"}]}
    first = post(client, "/v1/chat/completions", body, HTTP_IDEMPOTENCY_KEY="k1", **auth)
    assert first.status_code == 409  # still running after the wait: it says so
    assert first["x-should-retry"] == "false"
    assert first.json()["error"]["code"] == "run_in_progress"
    Run.objects.update(state=RunState.FAILED, error="the model route failed")

    again = post(client, "/v1/chat/completions", body, HTTP_IDEMPOTENCY_KEY="k1", **auth)

    assert again.status_code == 502
    assert again["x-should-retry"] == "false"  # a retry would start (and spend on) a new run
    assert again.json()["error"]["code"] == "run_failed"
    assert Run.objects.count() == 1


def test_tokens_are_revoked_in_the_admin_never_deleted(client, people):
    token, _ = token_create(user=people.member, name="t", scopes=["runs:read"], days=1)
    client.force_login(people.admin)

    deleted = client.post(
        "/admin/portal/personalaccesstoken/",
        {"action": "delete_selected", "_selected_action": [token.pk], "post": "yes"},
    )

    assert deleted.status_code in (200, 302)
    assert PersonalAccessToken.objects.filter(pk=token.pk).exists()


# Cursors -----------------------------------------------------------------------------------


def cursor_paginated() -> list[str]:
    """The URL pattern of every list the API pages with its cursor (integrations.api.pagination)."""
    from django.urls import URLResolver, get_resolver
    from rest_framework.mixins import ListModelMixin

    from integrations.api.pagination import Cursor

    found = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
                continue
            view = getattr(pattern.callback, "view_class", None)
            if not (isinstance(view, type) and issubclass(view, ListModelMixin)):
                continue
            paginated = getattr(view, "pagination_class", None)
            if paginated and issubclass(paginated, Cursor):
                found.append("/" + route)

    walk(get_resolver().url_patterns, "")
    return found


def b64(text: str) -> str:
    return base64.b64encode(text.encode("latin-1")).decode()


CRAFTED = {
    "not base64": "!!!",
    "base64 without padding": "cD1hYmM",
    "not ASCII": "cD1h\u00e9",
    "base64 of garbage": b64("garbage\x01\xff"),
    "base64 of binary": base64.b64encode(b"\xff\xfe\x00p=1").decode(),
    "the reported one (p=abc)": "cD1hYmM=",
    "p is text": b64("p=abc"),
    "p is empty": b64("p="),
    "p is blank": b64("p=+"),
    "p is NUL": b64("p=%00"),
    "p holds a NUL": b64("p=1%002"),
    "p is past bigint": b64("p=" + "9" * 30),
    "p is below bigint": b64("p=-" + "9" * 30),
    "p is a float": b64("p=1.5"),
    "p is date-ish": b64("p=2024-13-45T25:61"),
    "p is an encoded surrogate": b64("p=%ED%A0%80"),
    "p is latin-1": b64("p=%E9"),
    "p is huge": b64("p=" + "1" * 5000),
    "p twice": b64("p=1&p=2"),
    "o is negative": b64("o=-1&p=1"),
    "o is text": b64("o=x&p=1"),
    "o is huge": b64("o=" + "9" * 30 + "&p=1"),
    "o in other digits": b64("o=%D9%A1&p=1"),
    "r is 2": b64("r=2&p=1"),
    "r is text": b64("r=yes"),
    "an unknown key": b64("q=1"),
    "no equals sign": b64("p"),
}


@pytest.fixture
def full_access(people):
    from django.conf import settings

    scopes = list(settings.OAUTH2_PROVIDER["SCOPES"])
    _, secret = token_create(user=people.admin, name="all", scopes=scopes, days=1)
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_every_cursor_paginated_list_is_found():
    lists = cursor_paginated()

    for expected in (
        "/api/v1/agents",
        "/api/v1/conversations",
        "/api/v1/approvals",
        "/api/v1/escalations",
        "/api/v1/audit/events",
        "/api/v1/tools",
        "/api/v1/knowledge-bases",
        "/api/v1/knowledge-bases/<slug:slug>/documents",
    ):
        assert expected in lists


def filled(pattern: str, governed) -> str:
    """The list's address with the governed world's agent or knowledge base in it."""
    if pattern.startswith("/api/v1/agents/<slug:slug>"):
        return pattern.replace("<slug:slug>", governed.agent.slug)
    return pattern.replace("<slug:slug>", governed.knowledge_base.slug)


@pytest.mark.parametrize("pattern", cursor_paginated())
def test_a_crafted_cursor_is_a_400_on_every_list(client, governed, full_access, pattern):
    url = filled(pattern, governed)
    assert client.get(url, **full_access).status_code == 200  # the list itself answers
    answers = {}

    for name, cursor in CRAFTED.items():
        response = client.get(url, {"cursor": cursor}, **full_access)
        answers[name] = (response.status_code, response.json().get("type"))

    refused = (400, "/api/problems/invalid-cursor")
    assert {name: answer for name, answer in answers.items() if answer != refused} == {}
    response = client.get(url, {"cursor": CRAFTED["p is text"]}, **full_access)
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == "the cursor is not valid"


SPARSE = {  # lists this test leaves empty or nearly: their cursors are crafted above
    "/api/v1/approvals",
    "/api/v1/escalations",
    "/api/v1/knowledge-bases",
    "/api/v1/knowledge-bases/<slug:slug>/documents",
    "/api/v1/agents/<slug:slug>/versions",
}


@pytest.mark.parametrize("pattern", cursor_paginated())
def test_the_cursors_warden_writes_still_page_both_ways(
    client, people, governed, full_access, pattern
):
    for n in range(3):
        conversation = Conversation.objects.create(owner=people.admin, agent=governed.agent)
        Agent.objects.create(name=f"A{n}", slug=f"a-{n}", route=governed.route)
        answered = Run.objects.create(
            agent=governed.agent,
            conversation=conversation,
            actor=people.admin,
            input="q",
            state=RunState.SUCCEEDED,
        )
        Feedback.objects.create(run=answered, author=people.admin, rating="up")
    url = filled(pattern, governed)
    everything = client.get(url, {"limit": 200}, **full_access).json()["results"]
    assert len(everything) >= 2 or pattern in SPARSE
    forward, link = [], f"{url}?limit=1"
    while link:
        page = client.get(link, **full_access)
        assert page.status_code == 200, page.content
        forward += page.json()["results"]
        last, link = link, page.json()["next"]
    backward = []
    link = client.get(last, **full_access).json()["previous"]
    while link:
        page = client.get(link, **full_access)
        assert page.status_code == 200, page.content
        backward = page.json()["results"] + backward
        link = page.json()["previous"]

    assert forward == everything
    assert backward == everything[:-1]


# JSON bodies -------------------------------------------------------------------------------

# Raw JSON text: a NUL and an unpaired surrogate are valid JSON escapes, neither is text that
# PostgreSQL (or UTF-8) keeps.
SURROGATE, NUL = "\\ud800", "\\u0000"


@pytest.mark.parametrize(
    ("body", "field", "where"),
    [
        (f'{{"input": "hi {SURROGATE}"}}', "input", "input contains an unpaired surrogate"),
        (f'{{"input": "hi {NUL}"}}', "input", "input contains a NUL character"),
        (f'{{"input": "hi", "{NUL}": 1}}', "\\u0000", "\\u0000 is a key that contains a NUL"),
        (
            f'{{"input": "hi", "metadata": {{"a": ["ok", "{SURROGATE}"]}}}}',
            "metadata",
            "metadata.a[1] contains an unpaired surrogate",
        ),
        (f'["{NUL}"]', "body", "[0] contains a NUL character"),
    ],
    ids=["surrogate", "NUL", "NUL key", "nested", "top-level list"],
)
def test_a_json_body_holding_unstorable_text_is_a_400_naming_the_place(
    client, people, assistant, body, field, where
):
    response = post(client, f"/api/v1/agents/{assistant.slug}/runs", body, **pat(people.member))

    assert response.status_code == 400, response.content
    problem = response.json()
    assert problem["type"] == "/api/problems/invalid"
    [message] = problem["errors"][field]
    assert message.startswith(where)
    assert not Run.objects.exists()


def test_edited_arguments_with_an_unpaired_surrogate_decide_nothing(
    client, people, help_desk, server
):
    run = parked(server, help_desk, people.member)
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)
    body = f'{{"decision": "approve", "arguments": {{"title": "{SURROGATE}"}}}}'

    response = post(client, f"/api/v1/approvals/{approval.pk}/decide", body)

    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {
        "arguments": ["arguments.title contains an unpaired surrogate, which is not text"]
    }
    approval.refresh_from_db()
    assert (approval.status, approval.decided_by) == ("pending", None)
    assert Run.objects.get(pk=run.pk).state == "awaiting_approval"


def test_an_earlier_openai_message_with_a_nul_is_a_400_naming_it(client, people, assistant):
    body = (
        f'{{"model": "agent:{assistant.slug}", "messages": ['
        f'{{"role": "system", "content": "be {NUL} brief"}}, {{"role": "user", "content": "hi"}}'
        "]}"
    )

    response = post(client, "/v1/chat/completions", body, **pat(people.member))

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["type"]) == ("messages", "invalid_request_error")
    assert error["message"].startswith("messages[0].content contains a NUL character")
    assert not Run.objects.exists()
