"""Personal access tokens: made on the account page, shown once, kept as a digest, acting as
their user within their scopes, until they expire or are revoked."""

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from integrations.models import PersonalAccessToken
from integrations.tokens import token_create

pytestmark = pytest.mark.django_db


def bearer(secret: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_a_token_is_shown_once_and_kept_only_as_a_digest(client, people):
    client.force_login(people.member)

    made = client.post(
        "/account/tokens/", {"name": "nightly report", "scopes": ["runs:read"], "days": "30"}
    )

    assert made.status_code == 200
    page = made.content.decode()
    [token] = PersonalAccessToken.objects.filter(user=people.member)
    start = page.index('value="wdn_pat_') + len('value="')
    secret = page[start : page.index('"', start)]
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(PersonalAccessToken.objects.filter(pk=token.pk).values().get())
    assert token.scopes == ["runs:read"]
    assert timedelta(days=29, hours=23) < token.expires_at - timezone.now() <= timedelta(days=30)
    again = client.get("/account/tokens/").content.decode()
    assert secret not in again
    assert token.prefix in again
    made_by = AuditEvent.objects.filter(action="token.created", actor_id=str(people.member.pk))
    assert made_by.exists()


def test_a_token_acts_as_its_user_within_its_scopes(client, people, governed):
    _, secret = token_create(user=people.member, name="t", scopes=["agents:run"], days=1)

    listed = client.get("/api/v1/agents", **bearer(secret))

    assert listed.status_code == 200
    assert [a["slug"] for a in listed.json()["results"]] == [governed.agent.slug]
    out_of_scope = client.get("/api/v1/runs/1", **bearer(secret))
    assert out_of_scope.status_code == 403
    assert out_of_scope.json()["detail"] == "the token lacks the scope 'runs:read'"
    _, outsider = token_create(user=people.outsider, name="t", scopes=["agents:run"], days=1)
    assert client.get("/api/v1/agents", **bearer(outsider)).json()["results"] == []


@pytest.mark.parametrize("how", ["revoked", "expired", "disabled", "altered"])
def test_a_revoked_expired_or_altered_token_is_refused(client, people, how):
    token, secret = token_create(user=people.member, name="t", scopes=["agents:run"], days=1)
    if how == "revoked":
        client.force_login(people.member)
        assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 302
        client.logout()
    elif how == "expired":
        PersonalAccessToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    elif how == "disabled":
        people.member.is_active = False
        people.member.save()
    else:
        secret = secret[:-1] + ("A" if secret[-1] != "A" else "B")

    response = client.get("/api/v1/agents", **bearer(secret))

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_one_cannot_revoke_someone_elses_token(client, people):
    token, _secret = token_create(user=people.member, name="t", scopes=["agents:run"], days=1)
    client.force_login(people.outsider)

    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 404

    token.refresh_from_db()
    assert token.revoked_at is None
    assert not AuditEvent.objects.filter(action="token.revoked").exists()


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"name": "", "scopes": ["runs:read"], "days": "30"}, "Give the token a name"),
        ({"name": "x", "scopes": [], "days": "30"}, "Choose at least one scope"),
        ({"name": "x", "scopes": ["root"], "days": "30"}, "Unknown scopes: root"),
        ({"name": "x", "scopes": ["runs:read"], "days": "9999"}, "A token lasts from 1 to 366"),
        ({"name": "x\x00", "scopes": ["runs:read"], "days": "1"}, "NUL character"),
    ],
)
def test_a_bad_token_request_says_why_and_makes_nothing(client, people, form, message):
    client.force_login(people.member)

    response = client.post("/account/tokens/", form)

    assert response.status_code == 400
    assert message in response.content.decode()
    assert not PersonalAccessToken.objects.exists()


def test_the_last_use_is_recorded_at_most_once_a_minute(client, people, governed):
    token, secret = token_create(user=people.member, name="t", scopes=["agents:run"], days=1)
    client.get("/api/v1/agents", **bearer(secret))
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None

    client.get("/api/v1/agents", **bearer(secret))

    token.refresh_from_db()
    assert token.last_used_at == first


def test_governance_sees_tokens_without_their_secrets_and_may_revoke_them(client, people):
    token, secret = token_create(user=people.member, name="etl", scopes=["runs:read"], days=5)
    client.force_login(people.admin)

    listed = client.get("/admin/portal/personalaccesstoken/")
    revoked = client.post(
        "/admin/portal/personalaccesstoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )

    assert listed.status_code == 200
    assert "etl" in listed.content.decode()
    assert secret not in listed.content.decode()
    assert token.digest not in listed.content.decode()
    assert revoked.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.filter(action="token.revoked", actor_id=str(people.admin.pk)).exists()
