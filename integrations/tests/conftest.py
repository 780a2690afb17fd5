"""OAuth2 client applications with their tokens, for the API's tests (the personas and agents
are tests/personas.py's)."""

import base64

import pytest

SECRET = "s3cret-for-the-test-only"


def application_for(user, name: str = "CRM", scopes=None):
    """A confidential client-credentials application acting as `user`, secret SECRET, allowed
    `scopes` (every scope unless told)."""
    from django.conf import settings
    from oauth2_provider.models import Application

    from integrations.models import ApplicationScopes

    application = Application.objects.create(
        name=name,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        user=user,
        client_secret=SECRET,
    )
    allowed = list(settings.OAUTH2_PROVIDER["SCOPES"]) if scopes is None else scopes
    ApplicationScopes.objects.create(application=application, scopes=allowed)
    return application


def token_of(client, application, scope: str) -> str:
    """An access token from POST /o/token/ (client credentials, HTTP Basic)."""
    basic = base64.b64encode(f"{application.client_id}:{SECRET}".encode()).decode()
    response = client.post(
        "/o/token/",
        {"grant_type": "client_credentials", "scope": scope},
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


@pytest.fixture
def application(people):
    """The integration account's application."""
    return application_for(people.integration)


@pytest.fixture
def bearer(client):
    """`bearer(user, scope)`: the Authorization header of a new application of `user`'s."""

    def issue(user, scope: str) -> dict:
        token = token_of(client, application_for(user, f"app of {user.username}"), scope)
        return {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    return issue


@pytest.fixture
def mcp_live(committing_db, server, unused_tcp_port):
    """daphne on the test database, waiting at most 3 s for an MCP call before a pending
    result (runs need a worker too: `start_worker()`)."""
    from django.db import connection

    from integrations.tests.test_openai import Live
    from tests.processes import daphne_on_test_database

    with daphne_on_test_database(unused_tcp_port, WARDEN_MCP_WAIT_SECONDS="3") as url:
        yield Live(url, server)
    connection.close()


def expose(name: str, *, exposed: bool = True, holders=()):
    """The built-in tool `name`, enabled and (unless told) exposed over MCP, usable by
    `holders`."""
    from audit.services import SYSTEM
    from governance.models import Action
    from governance.services import access_grant
    from tools.models import Tool

    tool = Tool.objects.get(name=name)
    tool.enabled, tool.mcp_exposed = True, exposed
    tool.save(update_fields=["enabled", "mcp_exposed"])
    for holder in holders:
        access_grant(obj=tool, holder=holder, action=Action.USE, actor=SYSTEM)
    return tool
