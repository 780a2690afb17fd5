"""Single sign-on against real OpenID Connect providers: django-oauth-toolkit in a process of
its own (tests/oidc_provider), reached over HTTP by Warden's backend, and a scripted provider
that hands Warden bad ID tokens. Warden runs in the test's process (the test client)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.models import AuditEvent
from sso import discovery
from sso.models import Identity
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, DotProvider
from tests.oidc_provider.fake import FakeProvider
from tests.processes import free_port

pytestmark = pytest.mark.django_db
User = get_user_model()
GROUP_MAP = {"warden-reviewers": "Reviewer", "engineering": ["Member", "Team Engineering"]}
USERS = [
    {
        "username": "alice",
        "password": "alice-provider-pw",
        "email": "alice@example.com",
        "given_name": "Alice",
        "family_name": "Ng",
        "groups": ["engineering", "warden-reviewers", "unmapped"],
    },
    {"username": "bob", "password": "bob-provider-pw", "email": "bob@example.com"},
]


@pytest.fixture(scope="module")
def provider():
    provider = DotProvider(
        port=free_port(), redirect_uris=["http://testserver/sso/callback/"], users=USERS
    )
    yield provider
    provider.stop()


def use(settings, issuer, **extra):
    settings.WARDEN_OIDC_ISSUER = issuer
    settings.WARDEN_OIDC_CLIENT_ID = CLIENT_ID
    settings.WARDEN_OIDC_CLIENT_SECRET = CLIENT_SECRET
    settings.WARDEN_OIDC_ALLOW_HTTP_LOOPBACK = True
    settings.WARDEN_OIDC_GROUP_MAP = GROUP_MAP
    settings.WARDEN_OIDC_PROVIDER_NAME = "Test IdP"
    for name, value in extra.items():
        setattr(settings, name, value)
    discovery.forget()


@pytest.fixture
def dot(settings, provider):
    use(settings, provider.issuer)
    return provider


def sign_in(client, provider, username: str, password: str, *, next_url: str = "/chat/"):
    """Warden's button, the provider's sign-in form, and back: Warden's callback response."""
    start = client.get(f"/sso/login/?next={next_url}")
    assert start.status_code == 302, start.content[:500]
    authorize = start["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["nonce"]
    assert query["state"]
    assert query["code_challenge"]
    browser = requests.Session()
    browser.get(f"{provider.url}/accounts/login/", timeout=30)
    browser.post(
        f"{provider.url}/accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": browser.cookies["provider_csrftoken"],
            "next": "/",
        },
        timeout=30,
    )
    back = browser.get(authorize, allow_redirects=False, timeout=30)
    assert back.status_code == 302, back.text[:500]
    callback = urlsplit(back.headers["Location"])
    assert callback.path == "/sso/callback/"
    return client.get(f"{callback.path}?{callback.query}")


def data(event) -> dict:
    return json.loads(event.data)


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))


def groups_of(user) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


def test_first_sign_in_creates_the_account_with_the_mapped_groups(client, dot):
    response = sign_in(client, dot, "alice", "alice-provider-pw")

    assert response.status_code == 302
    assert response["Location"] == "/chat/"
    alice = User.objects.get(username="alice")
    assert (alice.email, alice.first_name, alice.last_name) == ("alice@example.com", "Alice", "Ng")
    assert not alice.has_usable_password()
    assert groups_of(alice) == {"Reviewer", "Member", "Team Engineering"}
    identity = Identity.objects.get(user=alice)
    assert identity.issuer == dot.issuer
    assert identity.subject.isdigit()  # the provider's user id, not the name
    assert "Your roles: Member, Reviewer, Team Engineering." in client.get("/").content.decode()
    assert actions() == ["auth.sso_account_created", "auth.sso_groups_changed", "auth.signed_in"]
    event = AuditEvent.objects.get(action="auth.sso_groups_changed")
    assert data(event)["added"] == ["Member", "Reviewer", "Team Engineering"]
    assert CLIENT_SECRET not in str(list(AuditEvent.objects.values_list("data", flat=True)))
    kept = client.session["sso"]
    assert kept["issuer"] == dot.issuer
    assert kept["subject"] == identity.subject
    assert kept["refresh_token"].startswith("gAAAA")  # a Fernet token, not the refresh token


def test_groups_follow_the_provider_on_every_sign_in_and_hand_given_groups_stay(
    client, dot, django_user_model
):
    sign_in(client, dot, "alice", "alice-provider-pw")
    alice = User.objects.get(username="alice")
    alice.groups.add(Group.objects.create(name="Auditors"))  # given by hand in Warden
    dot.control("alice", groups=["engineering"])
    try:
        client.logout()
        response = sign_in(client, dot, "alice", "alice-provider-pw")
    finally:
        dot.control("alice", groups=USERS[0]["groups"])

    assert response.status_code == 302
    assert User.objects.filter(email="alice@example.com").count() == 1  # the same account
    assert groups_of(alice) == {"Member", "Team Engineering", "Auditors"}
    change = AuditEvent.objects.filter(action="auth.sso_groups_changed").last()
    assert (data(change)["added"], data(change)["removed"]) == ([], ["Reviewer"])


def test_a_local_account_with_the_same_name_is_not_taken_over(client, dot):
    local = User.objects.create_user("alice", password="local password 123", email="a@x.org")

    sign_in(client, dot, "alice", "alice-provider-pw")

    created = Identity.objects.get().user
    assert created.username == "alice-2"
    assert created.pk != local.pk
    local.refresh_from_db()
    assert local.check_password("local password 123")
    assert groups_of(local) == set()


def test_a_session_ends_when_the_provider_revokes_the_account(client, dot):
    sign_in(client, dot, "bob", "bob-provider-pw")
    assert client.get("/").status_code == 200
    dot.control("bob", revoke=True)
    session = client.session
    session["sso_renew_at"] = 0  # renewal is due
    session.save()

    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert AuditEvent.objects.filter(action="auth.sso_session_ended").count() == 1
    assert client.get("/").status_code == 302


def test_while_one_request_renews_the_others_go_on_without_renewing(client, dot):
    from django.core.cache import cache

    sign_in(client, dot, "bob", "bob-provider-pw")
    dot.control("bob", revoke=True)
    session = client.session
    session["sso_renew_at"] = 0
    session.save()
    cache.set(f"sso:renewing:{session.session_key}", 1, 60)  # another request is renewing

    assert client.get("/").status_code == 200
    cache.delete(f"sso:renewing:{session.session_key}")
    assert client.get("/").status_code == 302  # this one renews: refused, the session ends


def test_an_account_the_provider_disables_is_deactivated_at_renewal(client, dot, settings):
    settings.WARDEN_OIDC_ACTIVE_CLAIM = "active"
    sign_in(client, dot, "bob", "bob-provider-pw")
    dot.control("bob", active=False)
    try:
        session = client.session
        session["sso_renew_at"] = 0
        session.save()
        response = client.get("/")
    finally:
        dot.control("bob", active=True)

    assert response.status_code == 302
    bob = User.objects.get(username="bob")
    assert not bob.is_active
    assert Identity.objects.get(user=bob).deactivated_by_provider
    assert "auth.sso_deactivated" in actions()


def test_a_renewal_the_provider_grants_keeps_the_session_and_maps_groups_again(client, dot):
    sign_in(client, dot, "alice", "alice-provider-pw")
    dot.control("alice", groups=["warden-reviewers"])
    try:
        session = client.session
        session["sso_renew_at"] = 0
        session.save()
        response = client.get("/")
    finally:
        dot.control("alice", groups=USERS[0]["groups"])

    assert response.status_code == 200
    assert groups_of(User.objects.get(username="alice")) == {"Reviewer"}
    assert client.session["sso_renew_at"] > 0


def test_an_account_deactivated_in_warden_loses_its_sso_session_and_cannot_sign_in(client, dot):
    sign_in(client, dot, "bob", "bob-provider-pw")
    User.objects.filter(username="bob").update(is_active=False)  # an admin, in the console

    assert client.get("/").status_code == 302  # the session ended at once
    response = sign_in(client, dot, "bob", "bob-provider-pw")

    assert response.status_code == 403
    assert "deactivated; ask a governance admin" in response.content.decode()
    assert not User.objects.get(username="bob").is_active
    assert client.get("/").status_code == 302


def test_a_wrong_provider_password_signs_nobody_in(client, dot):
    start = client.get("/sso/login/")
    browser = requests.Session()
    browser.get(f"{dot.url}/accounts/login/", timeout=30)
    page = browser.post(
        f"{dot.url}/accounts/login/",
        data={
            "username": "alice",
            "password": "wrong",
            "csrfmiddlewaretoken": browser.cookies["provider_csrftoken"],
        },
        timeout=30,
    )
    assert "Wrong username or password" in page.text
    back = browser.get(start["Location"], allow_redirects=False, timeout=30)
    assert "/sso/callback/" not in back.headers.get("Location", "")
    assert not User.objects.filter(username="alice").exists()


# --- Bad ID tokens, from the scripted provider ---------------------------------------------


@pytest.fixture
def fake(settings):
    provider = FakeProvider()
    use(settings, provider.issuer)
    yield provider
    provider.close()


def through_fake(client, fake):
    start = client.get("/sso/login/")
    assert start.status_code == 302
    back = requests.get(start["Location"], allow_redirects=False, timeout=30)
    callback = urlsplit(back.headers["Location"])
    return client.get(f"{callback.path}?{callback.query}"), f"{callback.path}?{callback.query}"


def test_the_scripted_provider_signs_in_when_its_token_is_right(client, fake):
    response, _ = through_fake(client, fake)

    assert response.status_code == 302
    assert User.objects.filter(username="fay").exists()
    # PKCE: the verifier went to the token endpoint.
    assert len(fake.token_requests[-1]["code_verifier"]) >= 43


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("aud", "The ID token was issued for another client (aud), not Warden."),
        ("exp", "The ID token has expired (exp)."),
        ("nonce", "The ID token&#x27;s nonce is not this sign-in&#x27;s (a replayed token?)."),
        ("signature", "The ID token&#x27;s signature does not verify."),
        ("iss", "The ID token was issued by another issuer (iss)."),
    ],
)
def test_a_bad_id_token_is_refused_with_a_clear_page(client, fake, fault, reason):
    fake.fault = fault

    response, _ = through_fake(client, fake)

    assert response.status_code == 403
    html = response.content.decode()
    assert "Sign-in with Test IdP failed" in html
    assert reason in html
    assert not User.objects.exists()
    assert "_auth_user_id" not in client.session
    assert client.get("/").status_code == 302
    refusal = AuditEvent.objects.get(action="auth.sso_sign_in_refused")
    expected = reason.replace("&#x27;", "'").removesuffix(".")
    assert data(refusal)["reason"] == expected[0].lower() + expected[1:]


def test_next_may_not_lead_away_from_warden(client, fake):
    start = client.get("/sso/login/?next=https://evil.example/")
    back = requests.get(start["Location"], allow_redirects=False, timeout=30)
    callback = urlsplit(back.headers["Location"])

    response = client.get(f"{callback.path}?{callback.query}")

    assert response.status_code == 302
    assert response["Location"] == "/"


def test_a_stale_callback_signs_nobody_out(client, fake):
    first, callback = through_fake(client, fake)
    assert first.status_code == 302

    again = client.get(callback)

    assert again.status_code == 400
    assert client.get("/").status_code == 200  # still signed in


def test_the_provider_refusing_the_sign_in_gives_a_clear_page(client, fake):
    start = client.get("/sso/login/")
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]

    response = client.get(f"/sso/callback/?error=access_denied&state={state}")

    assert response.status_code == 403
    assert "The provider refused the sign-in: access_denied" in response.content.decode()
    assert not User.objects.exists()


def test_a_callback_used_twice_is_refused(client, fake):
    first, callback = through_fake(client, fake)
    assert first.status_code == 302
    client.logout()

    again = client.get(callback)

    assert again.status_code == 400
    assert "already used (state)" in again.content.decode()


def test_a_provider_that_cannot_be_reached_gives_a_clear_page(client, settings):
    use(settings, f"http://127.0.0.1:{free_port()}")

    response = client.get("/sso/login/")

    assert response.status_code == 502
    assert "could not be reached" in response.content.decode()


def test_an_http_issuer_is_refused_unless_allowed_for_loopback(client, settings, fake):
    settings.WARDEN_OIDC_ALLOW_HTTP_LOOPBACK = False
    discovery.forget()

    response = client.get("/sso/login/")

    assert response.status_code == 502
    assert "is not an https URL" in response.content.decode()


# --- The sign-in page ----------------------------------------------------------------------


def test_the_sign_in_page_offers_the_provider_and_passwords(client, settings):
    use(settings, "https://id.example.com")

    html = client.get("/login/?next=/chat/").content.decode()

    assert "Sign in with Test IdP" in html
    assert 'href="/sso/login/?next=/chat/"' in html
    assert 'name="password"' in html


def test_with_local_passwords_off_the_password_form_is_gone_and_refused(client, settings):
    use(settings, "https://id.example.com", WARDEN_LOCAL_PASSWORDS=False)
    backends = list(settings.AUTHENTICATION_BACKENDS)
    backends[1] = "sso.backend.PermissionsOnlyBackend"  # as portal/settings.py does
    settings.AUTHENTICATION_BACKENDS = backends
    User.objects.create_user("carol", password="carol password 123")

    html = client.get("/login/").content.decode()
    response = client.post("/login/", {"username": "carol", "password": "carol password 123"})

    assert "Sign in with Test IdP" in html
    assert 'name="password"' not in html
    assert "Password sign-in is switched off" in html
    assert response.status_code == 200  # the form again, with its error
    assert "_auth_user_id" not in client.session


def test_without_an_issuer_there_is_no_sso(client, settings):
    settings.WARDEN_OIDC_ISSUER = ""

    assert client.get("/sso/login/").status_code == 404
    assert client.get("/sso/callback/?code=x&state=y").status_code == 404
    assert "Sign in with" not in client.get("/login/").content.decode()
