"""Hostile and odd input to the API: each is a clear problem document (never a 500) and starts
or changes nothing; and the limits on what one account may hold open."""

import json

import pytest

from agents.models import Run, RunState
from portal.api.waits import wait_slot_give, wait_slot_take
from portal.models import PersonalAccessToken
from portal.tokens import token_create
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


def test_a_failed_run_tells_the_openai_sdk_not_to_retry(client, people, assistant, settings):
    settings.WARDEN_OPENAI_WAIT_SECONDS = 1  # no worker here: it answers that it still runs
    auth = pat(people.member)
    body = {"model": f"agent:{assistant.slug}", "messages": [{"role": "user", "content": "hi"}]}
    first = post(client, "/v1/chat/completions", body, HTTP_IDEMPOTENCY_KEY="k1", **auth)
    assert first.status_code == 200  # still running after the wait: it says so
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
