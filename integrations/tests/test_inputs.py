"""Input no table can keep is refused at the door (integrations.inputs.BadInputMiddleware): a NUL or
bytes that are not UTF-8 in the path or the query string is a 400 for every route of the
URLconf (a problem document for the API, a readable page for people), never a 500; hostile
values that are readable text reach the views without a 500 either; and a sent value that a
lookup cannot take is a 400 or a 404."""

import http.client
import json
import re

import pytest
from django.urls import URLResolver, get_resolver

from agents.models import Agent, Run
from integrations.tokens import token_create
from tests.processes import daphne_on_test_database

pytestmark = pytest.mark.django_db

API = ("/api/", "/v1/")
PARAMETER = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>|\(\?P<(?P<group>\w+)>[^)]*\)")


def routes() -> list[tuple[str, list[str]]]:
    """Every route of the URLconf that takes a parameter: (its pattern as one string, the
    converters of its parameters: int, str, slug, path, or `regex`)."""
    found = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            text = prefix + str(pattern.pattern).lstrip("^").removesuffix("$")
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, text)
                continue
            converters = [
                m["converter"] or ("regex" if m["group"] else "str")
                for m in PARAMETER.finditer(text)
            ]
            if converters:
                found.append(("/" + text, converters))

    walk(get_resolver().url_patterns, "")
    return found


def url(pattern: str, value: str) -> str:
    return PARAMETER.sub(value, pattern)


ROUTES = routes()


def test_the_urlconf_is_walked_whole():
    patterns = {pattern for pattern, _ in ROUTES}
    assert len(ROUTES) > 100  # the admin's many, the API's, the portal's
    for expected in (
        "/v1/models/<str:model>",
        "/api/v1/runs/<int:pk>",
        "/api/v1/agents/<slug:slug>/runs",
        "/inbox/approvals/<int:pk>/",
        "/admin/agents/agent/<path:object_id>/change/",
    ):
        assert expected in patterns


@pytest.mark.parametrize("value", ["%00", "agent:%00", "x%00y"])
def test_every_route_refuses_a_nul_in_its_path_parameters_with_a_400(client, people, value):
    client.force_login(people.admin)  # the views would run, if the request got that far
    answered = {}

    for pattern, _ in ROUTES:
        path = url(pattern, value)
        response = client.get(path)
        answered[path] = response.status_code
        if response.status_code != 400:
            continue
        if path.startswith(API):
            assert response["Content-Type"] == "application/problem+json", path
            assert response.json()["type"] == "/api/problems/unreadable-input"
        else:
            assert "cannot be read" in response.content.decode(), path

    assert {path: code for path, code in answered.items() if code != 400} == {}


def test_the_reported_model_path_is_a_problem_document(client, people):
    client.force_login(people.admin)

    response = client.get("/v1/models/agent:%00")

    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "/api/problems/unreadable-input"
    assert body["detail"].startswith("the path holds a NUL character")


@pytest.mark.parametrize(
    "query",
    ["q=%00", "cursor=%00", "tool=a%00b", "x=%ED%A0%80", "limit=%FF", "%00=1"],
)
@pytest.mark.parametrize("path", ["/api/v1/agents", "/v1/models", "/inbox/", "/admin/agents/run/"])
def test_a_query_string_with_a_nul_or_undecodable_bytes_is_a_400(client, people, path, query):
    client.force_login(people.admin)

    response = client.get(f"{path}?{query}")

    assert response.status_code == 400
    if path.startswith(API):
        assert response.json()["detail"].startswith("the query string holds")
    else:
        assert response["Content-Type"].startswith("text/html")
        assert "The query string holds a NUL character" in response.content.decode()


@pytest.mark.parametrize(("selected", "status"), [("1\x00", 400), ("abc", 400), ("9" * 30, 302)])
def test_an_admin_action_on_ids_no_row_can_have_is_a_400_and_deletes_nothing(
    client, people, governed, selected, status
):
    client.force_login(people.admin)
    agents = Agent.objects.count()

    response = client.post(
        "/admin/agents/agent/",
        {"action": "delete_selected", "_selected_action": [selected], "post": "yes"},
    )

    assert response.status_code == status  # past bigint: simply no such row, nothing to do
    if status == 400:
        assert "A value sent is not one Warden can look up" in response.content.decode()
    assert Agent.objects.count() == agents


def test_readable_text_still_passes(client, people, assistant):
    """The door refuses only what cannot be read: accents, U+FFFD and emoji are text."""
    client.force_login(people.member)

    assert client.get("/api/v1/agents?q=%C3%A9t%C3%A9%EF%BF%BD%F0%9F%99%82").status_code == 200
    assert client.get("/inbox/?tool=caf%C3%A9").status_code == 200
    response = client.post("/chat/send/", {"agent": assistant.pk, "text": "café ☕ \ufffd"})
    assert response.status_code == 302
    assert Run.objects.get().input == "café ☕ \ufffd"


HOSTILE = {
    "int": ["99999999999999999999999", "0"],
    "slug": ["a" * 300, "-"],
    "str": ["%EF%BF%BD", "a" * 300, "x'%20OR%201=1--"],
    "path": ["%EF%BF%BD", "a" * 300, "1/2", "99999999999999999999999"],
    "regex": ["x"],
}


def test_every_route_answers_hostile_but_readable_parameters_without_a_500(client, people):
    """Past the door: ids past bigint, long and odd text, reach the views as the admin."""
    client.force_login(people.admin)
    client.raise_request_exception = False
    failed = {}

    for pattern, converters in ROUTES:
        for value in {v for converter in converters for v in HOSTILE[converter]}:
            path = url(pattern, value)
            response = client.get(path)
            if response.status_code >= 500:
                failed[path[:120]] = response.status_code

    assert failed == {}


@pytest.mark.usefixtures("committing_db")
def test_a_running_warden_answers_the_reported_requests_with_400s(unused_tcp_port, people):
    """Over daphne, as the outside tester sent them: the raw bytes of the path reach Warden
    (the server itself would turn bytes that are not UTF-8 into U+FFFD)."""
    _, secret = token_create(user=people.admin, name="t", scopes=["agents:run"], days=1)
    auth = {"Authorization": f"Bearer {secret}"}

    def get(target: str) -> tuple[int, str | None, str]:
        connection = http.client.HTTPConnection("127.0.0.1", unused_tcp_port, timeout=30)
        try:
            connection.request("GET", target, headers=auth)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type"), response.read().decode()
        finally:
            connection.close()

    with daphne_on_test_database(unused_tcp_port):
        answers = {
            target: get(target)
            for target in (
                "/v1/models/agent:%00",
                "/v1/models/agent:%ED%A0%80",
                "/api/v1/runs/%FF",
                "/api/v1/agents?cursor=cD1hYmM=",
                "/api/v1/agents?cursor=%00",
                "/inbox/approvals/%C3/",
            )
        }

    for target, (status, content_type, body) in answers.items():
        assert status == 400, (target, body[:300])
        if target.startswith(API):
            kind = json.loads(body)["type"]
            assert content_type == "application/problem+json", target
            expected = "invalid-cursor" if "cD1hYmM" in target else "unreadable-input"
            assert kind == f"/api/problems/{expected}", target
        else:
            assert "This request cannot be read" in body
