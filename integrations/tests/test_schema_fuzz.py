"""schemathesis against the API's own OpenAPI schema, in process: whatever it sends, no 5xx,
every answer conforms to the schema (problem documents included), and no operation answers
without credentials."""

import re

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from agents.models import Conversation, Run, RunState
from integrations.tokens import token_create

# In process, the WSGI transport reads a run's event stream (asynchronous, for ASGI) at once.
pytestmark = pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume:Warning")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


@pytest.fixture
def api_schema(db, settings):
    settings.WARDEN_API_MAX_WAIT = 1  # a generated ?wait must not hold the suite for a minute
    settings.WARDEN_SSE_MAX_SECONDS = 10
    # ignored_auth sends a made-up token with each example, all from one address: far more than
    # the lockout allows (integrations.lockout), which tests/test_lockout.py covers.
    settings.WARDEN_LOCKOUT_TOKEN_FAILURES = 1_000_000
    # As Django's test client does: a request's end must not close the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def credentials(people, governed):
    """The member's token with every scope, and a finished run of theirs to find."""
    conversation = Conversation.objects.create(owner=people.member, agent=governed.agent)
    Run.objects.create(
        agent=governed.agent,
        conversation=conversation,
        actor=people.member,
        input="hello",
        state=RunState.SUCCEEDED,
        answer="hi",
    )
    from django.conf import settings as django_settings

    scopes = list(django_settings.OAUTH2_PROVIDER["SCOPES"])
    _, secret = token_create(user=people.member, name="fuzz", scopes=scopes, days=1)
    return {"Authorization": f"Bearer {secret}"}


def test_the_api_keeps_to_its_schema(api_schema, credentials, governed):
    # Each operation in turn, driven by hypothesis directly (schemathesis's pytest plugin
    # predates pytest 9).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    run = Run.objects.get()
    real = {"slug": governed.agent.slug, "id": run.pk, "pk": run.pk, "other": run.pk}
    assert len(operations) >= 5

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def keeps_to_it(case):
            case.call_and_validate(headers=credentials, checks=CHECKS)
            # And again on objects that exist (random ids hardly ever find one).
            if case.path_parameters:
                case.path_parameters = {
                    name: real.get(name, value) for name, value in case.path_parameters.items()
                }
                case.call_and_validate(headers=credentials, checks=CHECKS)

        keeps_to_it()


@pytest.mark.django_db
def test_no_operation_answers_without_credentials(client):
    paths = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    refused = []
    for path, operations in paths.items():
        url = re.sub(r"\{(id|pk|other)\}", "1", path).replace("{slug}", "x")
        for method in operations:
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            response = getattr(client, method)(url, content_type="application/json")
            refused.append((method, path, response.status_code))
    assert refused  # the schema lists operations
    assert [r for r in refused if r[2] != 401] == []
