"""An MCP client that has never met Warden, as the MCP authorization spec has it: refused at
/mcp, it follows the WWW-Authenticate header to the resource's metadata (RFC 9728), from there
to the authorization server's (RFC 8414), registers itself (RFC 7591), has its person sign in
and consent (authorization code with S256 PKCE, nothing else accepted), and calls with the
token it gets. A registered client may ask only for the scopes an admin allows."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
from urllib.parse import parse_qs, urlencode, urlparse

import anyio
import httpx
import pytest
from django.test import Client as DjangoClient
from oauth2_provider.models import Grant

from audit.models import AuditEvent
from integrations.models import ApplicationScopes, MCPClientAccess
from integrations.tests.conftest import expose
from integrations.tests.test_mcp import _session
from tests.processes import daphne_on_test_database
from tools.models import Tool

REDIRECT = "https://desktop-client.example/callback"


@pytest.fixture
def serving(committing_db, unused_tcp_port):
    """daphne with client registration on, registered clients allowed `scopes` (a string)."""
    from django.db import connection

    @contextlib.contextmanager
    def serve(scopes: str):
        with daphne_on_test_database(
            unused_tcp_port,
            WARDEN_MCP_CLIENT_REGISTRATION="true",
            WARDEN_MCP_REGISTERED_SCOPES=scopes,
        ) as url:
            yield url
        connection.close()

    return serve


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _discover(url: str) -> dict:
    """What the client learns from a refusal: the authorization server's metadata."""
    refused = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert refused.status_code == 401
    resource = refused.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
    issuer = httpx.get(resource).json()["authorization_servers"][0]
    return httpx.get(f"{issuer}/.well-known/oauth-authorization-server").json()


def _register(endpoint: str) -> dict:
    registered = httpx.post(
        endpoint,
        json={
            "client_name": "Desktop assistant",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
    )
    assert registered.status_code == 201, registered.text
    return registered.json()


def _asked(client_id: str, challenge: str | None) -> dict:
    asked = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "tools:call",
        "state": "st4te",
    }
    if challenge is not None:
        asked |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return asked


def _authorize(browser: DjangoClient, client_id: str, challenge: str) -> str:
    """The person consents in their browser; the code the redirect carries back."""
    asked = _asked(client_id, challenge)
    page = browser.get(f"/o/authorize/?{urlencode(asked)}")
    assert page.status_code == 200, page.content
    consented = browser.post("/o/authorize/", {**asked, "allow": "Authorize"})
    assert consented.status_code == 302, consented.content
    location = urlparse(consented["Location"])
    assert location.geturl().startswith(REDIRECT)
    return parse_qs(location.query)["code"][0]


def test_a_new_client_discovers_registers_and_calls_with_its_person_s_consent(serving, people):
    expose("get_ticket_status", holders=[people.member])
    with serving("tools:call") as url:
        metadata = _discover(url)
        assert metadata["code_challenge_methods_supported"] == ["S256"]
        assert "tools:call" in metadata["scopes_supported"]
        client = _register(metadata["registration_endpoint"])
        access = _consented_token(client, people.member)

        async def listed() -> list[str]:
            async with _session(url, access) as session:
                return sorted(t.name for t in (await session.list_tools()).tools)

        # Registered, it reaches nothing until an admin lists what it may (its allowlist).
        assert anyio.run(listed) == ["warden_run_result"]
        allowlist = MCPClientAccess.objects.get(application__client_id=client["client_id"])
        allowlist.tools.add(Tool.objects.get(name="get_ticket_status"))
        assert anyio.run(listed) == ["get_ticket_status", "warden_run_result"]
        # Nor can its registration token move it elsewhere afterwards (RFC 7592).
        moved = httpx.put(
            f"{metadata['registration_endpoint']}{client['client_id']}/",
            json={"redirect_uris": ["https://elsewhere.example/cb"]},
            headers={"Authorization": f"Bearer {client['registration_access_token']}"},
        )
        assert moved.status_code == 404
    event = json.loads(AuditEvent.objects.get(action="oauth.client_registered").data)
    assert event["client_id"] == client["client_id"]
    assert event["scopes"] == ["tools:call"]


def _consented_token(client: dict, person) -> str:
    browser = DjangoClient()
    browser.force_login(person)
    verifier, challenge = _pkce()
    code = _authorize(browser, client["client_id"], challenge)
    token = browser.post(
        "/o/token/",
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client["client_id"],
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.content
    return token.json()["access_token"]


def test_without_pkce_no_code_and_without_the_admin_s_scope_no_mcp(serving, people):
    expose("get_ticket_status", holders=[people.member])
    with serving("") as url:  # the default: an admin allows each registered client its scopes
        client = _register(_discover(url)["registration_endpoint"])
    assert ApplicationScopes.objects.get(application__client_id=client["client_id"]).scopes == []
    browser = DjangoClient()
    browser.force_login(people.member)

    for challenge in (None, _pkce()[1]):  # no PKCE; PKCE but a scope nobody allowed it
        page = browser.get(f"/o/authorize/?{urlencode(_asked(client['client_id'], challenge))}")
        assert page.status_code in (302, 400), page.content
        assert "code=" not in page.get("Location", "")
        assert not Grant.objects.filter(application__client_id=client["client_id"]).exists()


def test_registration_is_off_unless_switched_on(client):
    refused = client.post(
        "/o/register/",
        data=json.dumps({"client_name": "x", "redirect_uris": [REDIRECT]}),
        content_type="application/json",
    )
    assert refused.status_code == 404
    assert (
        "registration_endpoint" not in client.get("/.well-known/oauth-authorization-server").json()
    )
