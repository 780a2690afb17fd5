"""HTTP tools against a real server on loopback: requests built from the arguments, secrets as
credentials, retries, failures as structured errors, and SSRF refused before any byte is sent."""

import socket
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ValidationError

from tools.executors import http as http_executor
from tools.models import InvocationStatus, RiskTier, SecretKind, Tool, ToolInvocation
from tools.registry import ToolContext
from tools.secrets import secret_set
from tools.services import tool_invoke
from tools.tests.endpoint import Answer, Endpoint

pytestmark = pytest.mark.django_db

TOKEN = "crm-token-5be1-never-shown"
LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture
def user():
    return get_user_model().objects.create_user("ursula")


@pytest.fixture
def token():
    return secret_set(name="crm-token", kind=SecretKind.BEARER, value=TOKEN, actor=None)


CUSTOMER = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "fields": {"type": "string"},
        "note": {"type": "string"},
    },
    "required": ["customer"],
    "additionalProperties": False,
}


def http_tool(url: str, *, parameters=CUSTOMER, timeout=5, **config) -> Tool:
    tool = Tool(
        name=f"t{uuid.uuid4().hex[:8]}",
        description="a CRM call",
        kind="http",
        parameters=parameters,
        config={"method": "GET", "url": url, "allow_networks": LOOPBACK, **config},
        enabled=True,
        timeout=timeout,
    )
    tool.full_clean()
    tool.save()
    return tool


def call(tool: Tool, arguments: dict, user=None, key: str | None = None):
    key = key or f"run:1:step:{uuid.uuid4().int % 10**6}:call:0"
    return tool_invoke(tool=tool, arguments=arguments, key=key, context=ToolContext(actor=user))


def test_a_get_builds_its_url_query_and_headers_from_the_arguments(crm, user, token):
    crm.answer("/customers/a%20b%2Fc", Answer(body={"data": {"name": "Acme", "tier": "gold"}}))
    tool = http_tool(
        crm.url("/customers/{customer}"),
        auth={"secret": "crm-token", "scheme": "bearer"},
        headers={"Accept": "application/json"},
        select="/data",
    )

    outcome = call(tool, {"customer": "a b/c", "fields": "name"}, user, key="run:7:step:1:call:0")

    assert outcome.ok
    assert outcome.result == {"name": "Acme", "tier": "gold"}
    (request,) = crm.requests
    assert (request.method, request.path, request.query) == (
        "GET",
        "/customers/a%20b%2Fc",
        {"fields": "name"},
    )
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["idempotency-key"] == "run:7:step:1:call:0"
    assert request.headers["accept"] == "application/json"
    row = ToolInvocation.objects.get(key="run:7:step:1:call:0")
    assert (row.status, row.tool_version, row.actor) == ("succeeded", tool.version, user)
    assert row.latency_ms > 0


def test_a_post_sends_the_other_arguments_as_json_with_basic_or_header_auth(crm, user):
    secret_set(name="erp-basic", kind=SecretKind.BASIC, value="svc:pa55", actor=None)
    secret_set(name="erp-key", kind=SecretKind.HEADER, value="k-123", actor=None)
    crm.answer("/notes/c1", Answer(201, {"id": 9}))
    basic = http_tool(
        crm.url("/notes/{customer}"),
        method="POST",
        query=["fields"],
        auth={"secret": "erp-basic", "scheme": "basic"},
    )
    keyed = http_tool(
        crm.url("/notes/{customer}"),
        method="POST",
        auth={"secret": "erp-key", "scheme": "header", "header": "X-Api-Key"},
    )

    assert call(basic, {"customer": "c1", "fields": "id", "note": "hi"}, user).result == {"id": 9}
    assert call(keyed, {"customer": "c1", "note": "ho"}, user).ok

    first, second = crm.requests
    assert (first.query, first.json()) == ({"fields": "id"}, {"note": "hi"})
    assert first.headers["authorization"] == "Basic c3ZjOnBhNTU="  # svc:pa55
    assert (second.json(), second.headers["x-api-key"]) == ({"note": "ho"}, "k-123")


def test_a_timeout_is_a_structured_error_within_the_tools_timeout(crm, user):
    crm.answer("/slow", Answer(body={"late": True}, delay=3))
    tool = http_tool(crm.url("/slow"), parameters={"type": "object"}, timeout=1, retries=3)

    outcome = call(tool, {}, user)

    assert outcome.result["error"]["type"] == "timeout"
    assert not outcome.ok
    assert outcome.latency_ms < 2500
    assert ToolInvocation.objects.get(tool=tool.name).status == InvocationStatus.FAILED


def test_a_server_error_is_reported_and_a_503_is_retried_with_the_same_key(crm, user):
    crm.answer("/broken", Answer(500, b"database down"))
    crm.answer("/busy", Answer(503, b"busy"), Answer(body={"ok": 1}))
    broken = http_tool(crm.url("/broken"), parameters={"type": "object"})
    busy = http_tool(crm.url("/busy"), parameters={"type": "object"}, retries=2)

    failed = call(broken, {}, user)
    retried = call(busy, {}, user, key="run:2:step:0:call:0")

    assert failed.result == {
        "error": {"type": "http_error", "message": "127.0.0.1 answered HTTP 500: database down"}
    }
    assert len([r for r in crm.requests if r.path == "/broken"]) == 1  # 500 is not retried
    assert retried.result == {"ok": 1}
    keys = [r.headers["idempotency-key"] for r in crm.requests if r.path == "/busy"]
    assert keys == ["run:2:step:0:call:0"] * 2


def test_invalid_json_and_an_oversized_result(crm, user):
    crm.answer("/bad", Answer(body=b'{"a": 1,', headers={"Content-Type": "application/json"}))
    crm.answer("/big", Answer(body={"rows": ["x" * 50] * 100}))
    bad = http_tool(crm.url("/bad"), parameters={"type": "object"})
    big = http_tool(crm.url("/big"), parameters={"type": "object"})
    big.result_limit = 500
    big.save()

    invalid = call(bad, {}, user)
    cut = call(big, {}, user)

    assert invalid.result["error"]["type"] == "invalid_response"
    assert "invalid JSON" in invalid.result["error"]["message"]
    assert cut.ok
    assert cut.result["truncated"] is True
    assert len(cut.result["content"]) == 500
    assert cut.result["content"].startswith('{"rows"')
    assert "cut to 500 of its 5,410 characters" in cut.result["note"]


def test_a_response_over_the_read_cap_is_refused_and_odd_bytes_are_stored_safely(
    crm, user, monkeypatch
):
    monkeypatch.setattr(http_executor, "MAX_RESPONSE_BYTES", 1024)
    crm.answer("/huge", Answer(body=b"x" * 2048))
    crm.answer("/nul", Answer(body=b"a\x00b", headers={"Content-Type": "text/plain"}))
    crm.answer("/nan", Answer(body=b'{"v": NaN}', headers={"Content-Type": "application/json"}))
    huge = http_tool(crm.url("/huge"), parameters={"type": "object"})
    nul = http_tool(crm.url("/nul"), parameters={"type": "object"})
    nan = http_tool(crm.url("/nan"), parameters={"type": "object"})

    refused = call(huge, {}, user)
    text = call(nul, {}, user, key="k:nul")
    number = call(nan, {}, user, key="k:nan")

    assert refused.result["error"] == {
        "type": "invalid_response",
        "message": "the response is over 1 KB",
    }
    assert text.result == "a\ufffdb"
    assert number.result == {"v": "nan"}
    assert ToolInvocation.objects.get(key="k:nul").result == "a\ufffdb"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/x",
        "http://[::1]:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x",
        "http://localhost:{port}/x",  # a host name that resolves to loopback
        "http://[::ffff:127.0.0.1]:{port}/x",  # IPv4-mapped
        "http://2130706433:{port}/x",  # 127.0.0.1 as one number
        "http://0.0.0.0:{port}/x",
        "http://[64:ff9b::a9fe:a9fe]/x",  # 169.254.169.254 through NAT64
        "http://[2002:7f00:1::]/x",  # 6to4 around 127.0.0.1
        "http://[fd00:ec2::254]/x",  # a cloud's IPv6 metadata address
    ],
)
def test_private_and_reserved_destinations_are_refused_before_connecting(crm, user, url):
    crm.answer("/x", Answer(body={"secret": "internal"}))
    tool = http_tool(url.format(port=crm.port), parameters={"type": "object"}, allow_networks=[])

    outcome = call(tool, {}, user)

    assert outcome.result["error"]["type"] == "blocked"
    assert "private or reserved network" in outcome.result["error"]["message"]
    assert crm.requests == []


def test_a_redirect_to_loopback_is_refused(crm, user):
    crm.answer("/moved", Answer(302, b"", headers={"Location": "http://127.0.0.2:1/admin"}))
    tool = http_tool(crm.url("/moved"), parameters={"type": "object"})

    outcome = call(tool, {}, user)

    assert outcome.result["error"]["type"] == "blocked"
    assert "(127.0.0.2)" in outcome.result["error"]["message"]


def test_the_address_checked_is_the_address_connected_to(crm, user, monkeypatch):
    """DNS rebinding: a name that resolves to a public address when checked and to loopback
    a moment later. Warden resolves once and connects to what it checked."""
    lookups = []
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host != "crm.example.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "192.0.2.10" if len(lookups) == 1 else "127.0.0.1"  # TEST-NET-1, then loopback
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    crm.answer("/x", Answer(body={"secret": "internal"}))
    tool = http_tool(
        f"http://crm.example.test:{crm.port}/x",
        parameters={"type": "object"},
        allow_networks=["192.0.2.0/24"],
        retries=0,
        timeout=1,
    )

    outcome = call(tool, {}, user)

    assert not outcome.ok
    assert outcome.result["error"]["type"] in ("timeout", "unreachable")
    assert crm.requests == []  # loopback never saw the request
    assert lookups == ["crm.example.test"]  # resolved exactly once


def test_the_same_key_calls_once_and_reuses_the_result(crm, user):
    crm.answer("/orders", Answer(201, {"order": 1}), Answer(201, {"order": 2}))
    tool = http_tool(crm.url("/orders"), parameters={"type": "object"}, method="POST")
    tool.risk = RiskTier.WRITE
    tool.save()

    first = call(tool, {}, user, key="run:3:step:4:call:0")
    again = call(tool, {}, user, key="run:3:step:4:call:0")

    assert first.result == again.result == {"order": 1}
    assert again.reused
    assert len(crm.requests) == 1


def test_a_redirect_to_another_origin_loses_the_credential(crm, user, token):
    other = Endpoint()
    try:
        other.answer("/landing", Answer(body={"ok": True}))
        crm.answer("/moved", Answer(302, b"", headers={"Location": other.url("/landing")}))
        tool = http_tool(
            crm.url("/moved"),
            parameters={"type": "object"},
            auth={"secret": "crm-token", "scheme": "bearer"},
            headers={"X-Tenant": "acme"},
        )

        outcome = call(tool, {}, user, key="run:4:step:0:call:0")
    finally:
        other.close()

    assert outcome.result == {"ok": True}
    assert crm.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    (landed,) = other.requests
    assert "authorization" not in landed.headers
    assert "x-tenant" not in landed.headers
    assert landed.headers["idempotency-key"] == "run:4:step:0:call:0"


def test_a_post_that_timed_out_is_not_sent_again(crm, user):
    crm.answer("/orders", Answer(201, {"order": 1}, delay=2))
    tool = http_tool(crm.url("/orders"), parameters={"type": "object"}, method="POST", timeout=1)
    tool.config = {**tool.config, "retries": 3}
    tool.save()

    outcome = call(tool, {}, user)

    assert outcome.result["error"]["type"] == "timeout"
    assert len(crm.requests) == 1  # it may have been acted on: reported, not repeated


def test_a_path_argument_cannot_climb_out_of_its_segment(crm, user):
    tool = http_tool(crm.url("/v1/users/{customer}/orders"))

    outcome = call(tool, {"customer": ".."}, user)

    assert outcome.result["error"] == {
        "type": "invalid_arguments",
        "message": "customer may not be '..'",
    }
    assert crm.requests == []


def test_a_credential_echoed_in_an_error_is_redacted(crm, user, token):
    crm.answer("/me", Answer(401, f"invalid token {TOKEN}".encode()))
    tool = http_tool(
        crm.url("/me"),
        parameters={"type": "object"},
        auth={"secret": "crm-token", "scheme": "bearer"},
    )

    outcome = call(tool, {}, user, key="k:echo")

    assert outcome.result["error"]["message"] == (
        "127.0.0.1 answered HTTP 401: invalid token [redacted]"
    )
    assert TOKEN not in str(ToolInvocation.objects.get(key="k:echo").result)


def test_credential_headers_belong_in_a_secret():
    tool = Tool(
        name="leaky",
        description="d",
        kind="http",
        parameters={"type": "object"},
        config={"method": "GET", "url": "https://x.example/", "headers": {"Authorization": "k"}},
    )
    with pytest.raises(ValidationError) as refused:
        tool.full_clean()
    assert refused.value.message_dict["config"] == [
        "The header Authorization carries a credential: put it in a secret and use auth"
    ]


def test_the_rate_limit_is_per_user_per_minute(crm, user):
    cache.clear()  # the counters are keyed by ids, which a new test database reuses
    crm.answer("/q", Answer(body={"ok": True}))
    tool = http_tool(crm.url("/q"), parameters={"type": "object"})
    tool.rate_limit = 2
    tool.save()
    other = get_user_model().objects.create_user("olga")
    if time.time() % 60 > 57:  # the limit counts per clock minute: start clear of its end
        time.sleep(60 - time.time() % 60)

    outcomes = [call(tool, {}, user) for _ in range(3)]
    others = call(tool, {}, other)

    assert [o.ok for o in outcomes] == [True, True, False]
    assert outcomes[2].result["error"]["type"] == "rate_limited"
    assert others.ok
    assert len(crm.requests) == 3  # the refused call sent nothing
