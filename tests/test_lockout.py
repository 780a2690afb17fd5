"""Lockouts after repeated failed credentials (issue 19, point 4): the sign-in page (the admin's
too), client secrets at /o/token/, and bearer tokens on the API and the OpenAI-compatible
endpoint. Counts live in PostgreSQL (django-axes), so a lockout outlives the process."""

import base64
import json

import psycopg
import pytest
from asgiref.sync import async_to_sync
from axes.handlers.proxy import AxesProxyHandler
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient, Client
from oauth2_provider.models import AccessToken

from audit.models import AuditEvent
from integrations.tests.conftest import SECRET, application_for
from integrations.tokens import token_create

pytestmark = pytest.mark.django_db
User = get_user_model()
PASSWORD = "correct horse battery staple"
WRONG = "tr0ub4dor&3-guess"
HERE = "203.0.113.7"
ELSEWHERE = "198.51.100.9"


@pytest.fixture
def mia():
    return User.objects.create_user("mia", password=PASSWORD)


@pytest.fixture
def ned():
    return User.objects.create_user("ned", password=PASSWORD)


def sign_in(client, username: str, password: str, address: str = HERE, next_url: str = ""):
    data = {"username": username, "password": password}
    if next_url:
        data["next"] = next_url
    return client.post("/login/", data, REMOTE_ADDR=address)


class Lockout:
    def __init__(self, event: AuditEvent):
        self.target_type, self.target_id = event.target_type, event.target_id
        self.target_label = event.target_label
        self.data = json.loads(event.data)
        self.raw = event.data


def lockouts() -> list[Lockout]:
    events = AuditEvent.objects.filter(action="auth.locked_out").order_by("sequence")
    return [Lockout(event) for event in events]


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


def assert_locked_page(response) -> None:
    assert response.status_code == 429
    assert response["Content-Type"].startswith("text/html")
    assert 0 < int(response["Retry-After"]) <= 15 * 60
    page = response.content.decode()
    assert "Too many attempts" in page
    assert "Try again in 15 minutes" in page


def assert_locked_problem(response) -> dict:
    assert response.status_code == 429, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert 0 < int(response["Retry-After"]) <= 15 * 60
    body = response.json()
    assert body["type"] == "/api/problems/throttled"
    assert body["status"] == 429
    return body


# --- the sign-in page ---------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_account_from_that_address_even_for_the_right_one(
    client, mia
):
    for _ in range(4):
        response = sign_in(client, "mia", WRONG)
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    assert lockouts() == []

    assert_locked_page(sign_in(client, "mia", WRONG))
    response = sign_in(client, "mia", PASSWORD)

    assert_locked_page(response)
    assert not signed_in(client)
    assert client.get("/").status_code == 302  # still sent to sign in
    [event] = lockouts()  # one event for the lockout, none for the refused attempt after it
    assert event.target_type == "auth.user"
    assert event.target_id == str(mia.pk)
    assert event.data["channel"] == "sign-in"
    assert event.data["scope"] == "account and address"
    assert event.data["address"] == HERE
    assert event.data["failures"] == 5
    assert WRONG not in event.raw
    assert PASSWORD not in event.raw


def test_a_locked_account_still_signs_in_from_another_address_and_others_from_the_first(
    client, mia, ned
):
    for _ in range(5):
        sign_in(client, "mia", WRONG)
    assert_locked_page(sign_in(client, "mia", PASSWORD))

    elsewhere = Client()
    assert sign_in(elsewhere, "mia", PASSWORD, address=ELSEWHERE).status_code == 302
    assert signed_in(elsewhere)
    colleague = Client()
    assert sign_in(colleague, "ned", PASSWORD).status_code == 302  # same address, own account
    assert signed_in(colleague)


def test_an_admin_unlocks_an_account_with_axes_reset_username(client, mia):
    for _ in range(5):
        sign_in(client, "mia", WRONG)
    assert_locked_page(sign_in(client, "mia", PASSWORD))

    call_command("axes_reset_username", "mia")
    response = sign_in(client, "mia", PASSWORD)

    assert response.status_code == 302
    assert signed_in(client)


def test_a_successful_sign_in_forgets_that_accounts_failures_only(client, mia, ned):
    for _ in range(4):
        sign_in(client, "mia", WRONG)
        sign_in(client, "ned", WRONG)

    assert sign_in(client, "mia", PASSWORD).status_code == 302
    client.logout()

    assert sign_in(Client(), "mia", WRONG).status_code == 200  # counting from 1 again
    assert_locked_page(sign_in(Client(), "ned", WRONG))  # ned's four remain: this is the fifth


def test_an_address_trying_many_accounts_is_locked_out_for_every_account(client, settings, mia):
    settings.WARDEN_LOCKOUT_ADDRESS_FAILURES = 8
    names = [f"guess{n}" for n in range(4)]
    for name in names:
        sign_in(client, name, WRONG)
        sign_in(client, name, WRONG)  # two each: no account reaches its own limit of five

    response = sign_in(client, "mia", PASSWORD)

    assert_locked_page(response)
    assert not signed_in(client)
    [event] = lockouts()
    assert event.data["scope"] == "address"
    assert event.target_label.startswith("unknown user ")  # the name typed is not kept
    assert "guess3" not in event.raw + event.target_label
    assert sign_in(Client(), "mia", PASSWORD, address=ELSEWHERE).status_code == 302

    call_command("axes_reset_ip", HERE)
    assert sign_in(client, "mia", PASSWORD).status_code == 302


def test_the_stored_attempts_keep_no_password(client, mia):
    for _ in range(2):
        sign_in(client, "mia", WRONG)

    [attempt] = AccessAttempt.objects.all()
    assert attempt.username == "mia"
    assert attempt.failures_since_start == 2
    assert WRONG not in attempt.post_data
    assert "csrfmiddlewaretoken" not in attempt.post_data or "****" in attempt.post_data


# --- the admin's sign-in ----------------------------------------------------------------------


def test_the_admin_sign_in_is_the_same_locked_page_and_an_admin_unlocks_in_the_console(client):
    gail = User.objects.create_user("gail", password=PASSWORD, is_staff=True, is_superuser=True)
    otto_user = User.objects.create_user(
        "otto", password=PASSWORD, is_staff=True, is_superuser=True
    )
    assert client.get("/admin/", REMOTE_ADDR=HERE, follow=True).redirect_chain[-1][0] == (
        "/login/?next=%2Fadmin%2F"
    )
    for _ in range(5):
        sign_in(client, "gail", WRONG, next_url="/admin/")

    assert_locked_page(sign_in(client, "gail", PASSWORD, next_url="/admin/"))
    posted = client.post("/admin/login/", {"username": "gail", "password": PASSWORD})
    assert posted.status_code == 302
    assert posted["Location"] == "/login/"
    assert not signed_in(client)
    assert client.get("/admin/", REMOTE_ADDR=HERE).status_code == 302
    [event] = lockouts()
    assert event.target_id == str(gail.pk)

    # Another governance admin lifts it in the console: Access attempts, delete.
    otto = Client()
    assert sign_in(otto, "otto", PASSWORD, address=ELSEWHERE).status_code == 302
    listing = otto.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert "gail" in listing.content.decode()
    attempt = AccessAttempt.objects.get(username="gail")
    deleted = otto.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    assert not AccessAttempt.objects.filter(username="gail").exists()
    [unlocked] = AuditEvent.objects.filter(action="auth.unlocked")
    assert (unlocked.actor_id, unlocked.target_id) == (str(otto_user.pk), str(gail.pk))

    response = sign_in(client, "gail", PASSWORD, next_url="/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_the_asgi_stack_answers_a_locked_sign_in_with_the_page_too(client, mia):
    # daphne runs the middleware chain asynchronously, where axes calls the lockout answer
    # with other arguments than the test client's synchronous chain does.
    for _ in range(5):
        sign_in(client, "mia", WRONG, address="127.0.0.1")  # the AsyncClient's address

    response = async_to_sync(AsyncClient().post)(
        "/login/", {"username": "mia", "password": PASSWORD}
    )

    assert_locked_page(response)
    assert len(lockouts()) == 1


# --- client secrets at /o/token/ ----------------------------------------------------------------


def ask_token(client, application, secret: str, address: str = HERE):
    basic = base64.b64encode(f"{application.client_id}:{secret}".encode()).decode()
    return client.post(
        "/o/token/",
        {"grant_type": "client_credentials", "scope": "agents:run"},
        HTTP_AUTHORIZATION=f"Basic {basic}",
        REMOTE_ADDR=address,
    )


def test_wrong_client_secrets_lock_the_client_from_that_address(client, mia, ned):
    crm = application_for(mia, "CRM")
    other = application_for(ned, "ERP")
    for _ in range(4):
        response = ask_token(client, crm, "not-the-secret")
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    assert_locked_problem(ask_token(client, crm, "not-the-secret"))
    body = assert_locked_problem(ask_token(client, crm, SECRET))

    assert "try again in 15 minutes" in body["detail"]
    assert not AccessToken.objects.filter(application=crm).exists()
    [event] = lockouts()
    assert (event.target_type, event.target_id) == ("oauth2_provider.application", str(crm.pk))
    assert event.data["channel"] == "client"
    assert event.data["scope"] == "client and address"
    assert SECRET not in event.raw
    assert "not-the-secret" not in event.raw
    for attempt in AccessAttempt.objects.all():  # no secret kept with the attempts either
        assert "not-the-secret" not in attempt.post_data + attempt.get_data
    # Others are unaffected: another client from this address, this client from another.
    assert ask_token(client, other, SECRET).status_code == 200
    assert ask_token(Client(), crm, SECRET, address=ELSEWHERE).status_code == 200

    call_command("axes_reset_username", f"client:{crm.client_id}")
    assert ask_token(client, crm, SECRET).status_code == 200


def test_secrets_sent_in_the_body_count_too(client, mia):
    crm = application_for(mia, "CRM")
    form = {"grant_type": "client_credentials", "client_id": crm.client_id}
    for _ in range(5):
        client.post("/o/token/", {**form, "client_secret": "nope"}, REMOTE_ADDR=HERE)

    response = client.post("/o/token/", {**form, "client_secret": SECRET}, REMOTE_ADDR=HERE)

    assert_locked_problem(response)
    assert not AccessToken.objects.exists()


def test_a_garbage_basic_header_is_a_401_not_a_500(client):
    response = client.post(
        "/o/token/",
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION="Basic %%%not-base64\x7f",
        REMOTE_ADDR=HERE,
    )

    assert response.status_code == 401


# --- bearer tokens ----------------------------------------------------------------------------


def test_unknown_personal_tokens_lock_the_address_out_even_for_a_valid_token(client, settings, mia):
    settings.WARDEN_LOCKOUT_TOKEN_FAILURES = 10
    _, secret = token_create(user=mia, name="ci", scopes=["agents:run"], days=30)
    valid = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    garbage = {"HTTP_AUTHORIZATION": "Bearer wdn_pat_" + "x" * 43}
    assert client.get("/api/v1/agents", REMOTE_ADDR=HERE, **valid).status_code == 200
    for _ in range(9):
        assert client.get("/api/v1/agents", REMOTE_ADDR=HERE, **garbage).status_code == 401

    assert_locked_problem(client.get("/api/v1/agents", REMOTE_ADDR=HERE, **garbage))
    assert_locked_problem(client.get("/api/v1/agents", REMOTE_ADDR=HERE, **valid))

    [event] = lockouts()
    assert (event.target_type, event.target_label) == ("address", HERE)
    assert event.data["channel"] == "bearer"
    assert "wdn_pat_" not in event.raw
    # The token's owner elsewhere is not locked out by someone else's garbage here.
    assert client.get("/api/v1/agents", REMOTE_ADDR=ELSEWHERE, **valid).status_code == 200
    # Nor is this address's sign-in page: tokens keep a counter of their own.
    assert sign_in(client, "mia", PASSWORD).status_code == 302

    call_command("axes_reset_ip", HERE)
    assert client.get("/api/v1/agents", REMOTE_ADDR=HERE, **valid).status_code == 200


def test_unknown_oauth_tokens_on_the_openai_endpoint_get_openais_rate_limit_error(
    client, settings, mia
):
    settings.WARDEN_LOCKOUT_TOKEN_FAILURES = 10
    crm = application_for(mia, "CRM")
    token = ask_token(client, crm, SECRET, address=ELSEWHERE).json()["access_token"]
    valid = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    for n in range(9):
        garbage = {"HTTP_AUTHORIZATION": f"Bearer not-a-token-{n}"}
        response = client.get("/v1/models", REMOTE_ADDR=HERE, **garbage)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"

    locked = client.get("/v1/models", REMOTE_ADDR=HERE, HTTP_AUTHORIZATION="Bearer again")
    refused = client.get("/v1/models", REMOTE_ADDR=HERE, **valid)

    for response in (locked, refused):
        body = assert_locked_problem(response)
        assert body["error"]["type"] == "rate_limit_error"
    assert len(lockouts()) == 1
    assert client.get("/v1/models", REMOTE_ADDR=ELSEWHERE, **valid).status_code == 200


def test_requests_without_a_token_are_not_counted(client):
    for _ in range(40):
        assert client.get("/api/v1/agents", REMOTE_ADDR=HERE).status_code == 401

    assert not AccessAttempt.objects.exists()


# --- persistence ------------------------------------------------------------------------------


@pytest.mark.usefixtures("committing_db")
def test_the_lockout_is_kept_in_postgresql_and_outlives_the_process_state(mia):
    for _ in range(5):
        sign_in(Client(), "mia", WRONG)

    # What a restart loses: the cache (Redis may be flushed), the handler object, the client's
    # cookies, the database connection. The count is read back through a new connection.
    cache.clear()
    AxesProxyHandler.get_implementation(force=True)
    connection.close()
    params = connection.get_connection_params()
    with psycopg.connect(
        dbname=params["dbname"], user=params["user"], host=params["host"]
    ) as fresh:
        row = fresh.execute(
            "SELECT failures_since_start FROM axes_accessattempt "
            "WHERE username = 'mia' AND ip_address = %s",
            (HERE,),
        ).fetchone()
    assert row == (5,)

    client = Client()
    assert_locked_page(sign_in(client, "mia", PASSWORD))
    assert not signed_in(client)
