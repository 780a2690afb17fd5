"""The API's conventions: who a request acts as (session, OAuth2 client credentials with
scopes), problem documents with stable types, the request id, cursor pages, the schema."""

import base64

import pytest
from oauth2_provider.models import Application

from integrations.tests.conftest import SECRET, token_of

pytestmark = pytest.mark.django_db


def token(client, application, scope: str) -> str:
    return token_of(client, application, scope)


def test_without_credentials_the_answer_is_a_problem_document(client):
    response = client.get("/api/v1/agents", HTTP_X_REQUEST_ID="trace-42")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response["X-Request-ID"] == "trace-42"
    body = response.json()
    assert body["type"] == "/api/problems/not-authenticated"
    assert body["status"] == 401
    assert body["instance"] == "/api/v1/agents"
    described = client.get(body["type"])
    assert described.status_code == 200
    assert "Not authenticated" in described.content.decode()


def test_a_session_lists_the_agents_its_user_may_use(client, people, governed):
    client.force_login(people.member)
    assert [a["slug"] for a in client.get("/api/v1/agents").json()["results"]] == [
        governed.agent.slug
    ]
    client.force_login(people.outsider)
    assert client.get("/api/v1/agents").json()["results"] == []
    client.force_login(people.denied)
    assert client.get("/api/v1/agents").json()["results"] == []


def test_a_client_credentials_token_acts_as_its_applications_account(
    client, application, governed, people
):
    bearer = token(client, application, "agents:run")

    response = client.get("/api/v1/agents", HTTP_AUTHORIZATION=f"Bearer {bearer}")

    assert response.status_code == 200
    assert [a["slug"] for a in response.json()["results"]] == [governed.agent.slug]
    application.user = people.outsider  # the same token, now an account without the grant
    application.save()
    assert (
        client.get("/api/v1/agents", HTTP_AUTHORIZATION=f"Bearer {bearer}").json()["results"] == []
    )


def test_a_token_without_the_scope_is_forbidden(client, application, governed):
    bearer = token(client, application, "runs:read")

    response = client.get("/api/v1/agents", HTTP_AUTHORIZATION=f"Bearer {bearer}")

    assert response.status_code == 403
    assert response.json()["type"] == "/api/problems/forbidden"
    assert response.json()["detail"] == "the token lacks the scope 'agents:run'"


def test_a_disabled_account_s_token_is_refused(client, application, people):
    bearer = token(client, application, "agents:run")
    people.integration.is_active = False
    people.integration.save()

    response = client.get("/api/v1/agents", HTTP_AUTHORIZATION=f"Bearer {bearer}")

    assert response.status_code == 401
    assert response.json()["detail"] == "the token's account is missing or disabled"


def test_the_application_secret_is_kept_hashed(application):
    from django.contrib.auth.hashers import check_password

    stored = Application.objects.get(pk=application.pk).client_secret
    assert SECRET not in stored
    assert check_password(SECRET, stored)  # a password hash (PBKDF2 outside the tests)


def test_wrong_method_unknown_path_and_a_strange_request_id(client, people):
    client.force_login(people.member)
    posted = client.post("/api/v1/agents", {}, content_type="application/json")
    assert posted.status_code == 405
    assert posted.json()["type"] == "/api/problems/method-not-allowed"
    missing = client.get("/api/v1/nothing-here", HTTP_X_REQUEST_ID="bad id\n")
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/problem+json"
    assert missing.json()["type"] == "/api/problems/not-found"
    assert len(missing["X-Request-ID"]) == 32  # replaced by one of ours
    assert client.get("/api/problems/no-such-type").status_code == 404


def test_pages_are_cursors(client, people, governed):
    from agents.models import Agent
    from tests.access import grant

    more = [
        Agent.objects.create(name=f"A{i}", slug=f"more-{i}", route=governed.route) for i in range(3)
    ]
    grant(people.member, *more)
    client.force_login(people.member)

    first = client.get("/api/v1/agents?limit=2").json()
    second = client.get(first["next"]).json()

    seen = [a["slug"] for a in first["results"] + second["results"]]
    assert sorted(seen) == sorted([governed.agent.slug, *(a.slug for a in more)])
    assert second["next"] is None
    assert "page=" not in first["next"]  # opaque cursors, not offsets


def test_the_schema_is_valid_openapi_without_warnings(tmp_path):
    from django.core.management import call_command

    call_command("spectacular", validate=True, fail_on_warn=True, file=str(tmp_path / "s.yml"))
    assert "/api/v1/runs/{id}" in (tmp_path / "s.yml").read_text()


def test_the_schema_and_its_docs_are_served_from_warden_itself(client, people):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/agents" in document["paths"]
    client.force_login(people.member)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    page = docs.content.decode()
    assert "cdn." not in page
    assert "unpkg" not in page
    assert "<script>" not in page  # no inline script: the CSP forbids it


def test_a_run_is_read_by_its_owner_only(client, application, people, governed):
    from agents.models import Conversation, Run

    conversation = Conversation.objects.create(owner=people.integration, agent=governed.agent)
    run = Run.objects.create(
        agent=governed.agent,
        conversation=conversation,
        actor=people.integration,
        input="hello",
        state="succeeded",
        answer="hi [1]",
        prompt_tokens=11,
        completion_tokens=7,
    )
    reader = token(client, application, "runs:read")
    runner = token(client, application, "agents:run")

    mine = client.get(f"/api/v1/runs/{run.pk}", HTTP_AUTHORIZATION=f"Bearer {reader}")
    wrong_scope = client.get(f"/api/v1/runs/{run.pk}", HTTP_AUTHORIZATION=f"Bearer {runner}")
    client.force_login(people.member)  # someone else (IDOR): the same answer as a missing run
    theirs = client.get(f"/api/v1/runs/{run.pk}")
    missing = client.get(f"/api/v1/runs/{run.pk + 1000}")

    assert mine.status_code == 200
    body = mine.json()
    assert (body["id"], body["agent"], body["state"], body["answer"]) == (
        run.pk,
        governed.agent.slug,
        "succeeded",
        "hi [1]",
    )
    assert (body["prompt_tokens"], body["completion_tokens"], body["steps"]) == (11, 7, [])
    assert wrong_scope.status_code == 403
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() | {"instance": None} == missing.json() | {"instance": None}


def test_an_application_gets_only_the_scopes_it_was_allowed(client, people):
    from oauth2_provider.models import AccessToken

    from integrations.tests.conftest import application_for

    limited = application_for(people.integration, "Reports", scopes=["runs:read"])
    unset = Application.objects.create(  # made elsewhere, no scopes chosen yet
        name="New",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        user=people.integration,
        client_secret=SECRET,
    )

    def ask(application, scope):
        basic = base64.b64encode(f"{application.client_id}:{SECRET}".encode()).decode()
        return client.post(
            "/o/token/",
            {"grant_type": "client_credentials", "scope": scope},
            HTTP_AUTHORIZATION=f"Basic {basic}",
        )

    assert ask(limited, "runs:read").status_code == 200
    refused = ask(limited, "runs:read agents:run")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"
    assert ask(unset, "runs:read").json()["error"] == "invalid_scope"
    assert list(AccessToken.objects.values_list("application__name", "scope")) == [
        ("Reports", "runs:read")
    ]


def test_the_admin_chooses_an_applications_scopes(client, people):
    from integrations.tests.conftest import application_for

    application = application_for(people.integration, "Reports", scopes=[])
    client.force_login(people.admin)

    page = client.get(f"/admin/oauth2_provider/application/{application.pk}/change/")

    assert page.status_code == 200
    assert "Allowed scopes" in page.content.decode()
    assert 'value="audit:read"' in page.content.decode()
