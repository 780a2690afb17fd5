"""The gateway against a scripted OpenAI-compatible server: real HTTP through litellm."""

import uuid
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from agents.gateway import ModelUnavailable, gateway_complete, gateway_estimate_cost
from agents.gateway.client import cache_stats
from agents.models import Deployment, ModelRoute
from tests.model_server import Reply

pytestmark = pytest.mark.django_db
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def route(server):
    """Primary then secondary, no retries, a short timeout, cooldown after one failure."""
    route = ModelRoute.objects.create(
        name=f"chat-{uuid.uuid4().hex[:8]}",
        num_retries=0,
        timeout_seconds=1.0,
        allowed_fails=0,
        cooldown_seconds=60,
    )
    for position, name, region in ((1, "primary", "us"), (2, "secondary", "eu")):
        Deployment.objects.create(
            route=route,
            position=position,
            model=f"openai/{name}",
            api_base=server.base(name),
            region=region,
        )
    return route


@pytest.mark.parametrize(
    "failure", [Reply.fail(500), Reply.fail(429), Reply.hang(3)], ids=["500", "429", "timeout"]
)
def test_a_failing_primary_falls_back_and_cools_down(server, route, failure):
    server.script("primary", failure)

    first = gateway_complete(route=route, messages=HELLO)
    second = gateway_complete(route=route, messages=HELLO)

    assert first.content == "secondary says hello"
    assert first.deployment == f"{route.name}#2"
    assert first.fallbacks == [f"{route.name}#1"]
    assert second.deployment == f"{route.name}#2"
    assert server.count("primary") == 1  # the cooldown kept the second call off it
    assert server.count("secondary") == 2
    # In the metrics: both calls passed the primary over; its one cooldown counted once.
    primary = {"route": route.name, "deployment": f"{route.name}#1"}
    assert REGISTRY.get_sample_value("warden_model_fallbacks_total", primary) == 2
    assert REGISTRY.get_sample_value("warden_model_cooldowns_total", primary) == 1


def test_a_healthy_primary_answers_without_fallback(server, route):
    reply = gateway_complete(route=route, messages=HELLO)

    assert (reply.content, reply.deployment, reply.fallbacks) == (
        "primary says hello",
        f"{route.name}#1",
        [],
    )
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 7)
    assert server.count("secondary") == 0


def test_when_every_deployment_fails_the_error_is_clear(server, route):
    server.default("primary", Reply.fail(500))
    server.default("secondary", Reply.fail(503))

    with pytest.raises(ModelUnavailable, match=rf"route {route.name}: no deployment answered"):
        gateway_complete(route=route, messages=HELLO)


def test_streaming_delivers_tokens_as_they_come_and_the_usage(server, route):
    server.script("primary", Reply.say("Your ticket is open and assigned"))
    tokens: list[str] = []

    reply = gateway_complete(route=route, messages=HELLO, on_token=tokens.append)

    assert tokens == ["Your", " ticket", " is", " open", " and", " assigned"]
    assert reply.content == "Your ticket is open and assigned"
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 7)
    assert server.requests["primary"][0]["stream"] is True


def test_tool_calls_come_back_and_malformed_arguments_stay_raw(server, route):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_ticket_status",
                "description": "d",
                "parameters": {"type": "object"},
            },
        }
    ]
    server.script(
        "primary",
        Reply.call("get_ticket_status", {"ticket": 4}),
        Reply.call("get_ticket_status", '{"ticket": 4'),
    )

    good = gateway_complete(route=route, messages=HELLO, tools=tools)
    bad = gateway_complete(route=route, messages=HELLO, tools=tools)

    assert [(c.name, c.arguments) for c in good.tool_calls] == [
        ("get_ticket_status", '{"ticket": 4}')
    ]
    assert bad.tool_calls[0].arguments == '{"ticket": 4'
    assert server.requests["primary"][0]["tools"] == tools


def test_cost_uses_the_deployments_prices(server, route):
    route.deployments.filter(position=1).update(
        input_cost_per_token=Decimal("0.000001"), output_cost_per_token=Decimal("0.000003")
    )
    route.save()  # touching the route rebuilds its router

    reply = gateway_complete(route=route, messages=HELLO)

    assert reply.cost == Decimal("0.000032")  # 11 x 1e-6 + 7 x 3e-6


def test_only_deployments_in_allowed_regions_are_used(server, route):
    reply = gateway_complete(route=route, messages=HELLO, allowed_regions=["eu"])

    assert reply.deployment == f"{route.name}#2"
    assert server.count("primary") == 0
    with pytest.raises(
        ModelUnavailable, match=r"no deployment of route .* is in an allowed region"
    ):
        gateway_complete(route=route, messages=HELLO, allowed_regions=["ap"])


def test_the_router_is_rebuilt_when_a_deployment_changes(server, route):
    gateway_complete(route=route, messages=HELLO)
    primary = Deployment.objects.get(route=route, position=1)
    primary.api_base = server.base("replacement")
    primary.save()  # moves the route's updated_at

    route.refresh_from_db()
    reply = gateway_complete(route=route, messages=HELLO)

    assert reply.content == "replacement says hello"


def test_the_cache_hits_within_a_scope_and_never_across_scopes(server, route):
    route.cache_seconds = 60
    route.save()
    before = cache_stats()

    first = gateway_complete(route=route, messages=HELLO, cache_scope="perms:a")
    again = gateway_complete(route=route, messages=HELLO, cache_scope="perms:a")
    other = gateway_complete(route=route, messages=HELLO, cache_scope="perms:b")

    after = cache_stats()
    assert (first.cached, again.cached, other.cached) == (False, True, False)
    assert again.content == first.content
    assert server.count("primary") == 2  # the first call and the other scope's
    assert after["hits"] - before["hits"] == 1
    assert after["misses"] - before["misses"] == 2
    assert after["tokens_saved"] - before["tokens_saved"] == 18


def test_a_missing_key_variable_is_named(server, route):
    Deployment.objects.filter(route=route, position=1).update(
        api_key_ref="env:WARDEN_TEST_NO_SUCH_KEY"
    )

    with pytest.raises(
        ModelUnavailable, match="needs the environment variable WARDEN_TEST_NO_SUCH_KEY"
    ):
        gateway_complete(route=route, messages=HELLO)


@pytest.fixture
def lone(server):
    """A route with one deployment (called without a Router): one retry, priced."""
    route = ModelRoute.objects.create(
        name=f"lone-{uuid.uuid4().hex[:8]}", num_retries=1, timeout_seconds=1.0
    )
    Deployment.objects.create(
        route=route,
        position=1,
        model="openai/primary",
        api_base=server.base("primary"),
        input_cost_per_token=Decimal("0.000001"),
        output_cost_per_token=Decimal("0.000003"),
    )
    return route


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_lone_deployment_is_retried_and_priced(server, lone, streamed):
    server.script("primary", Reply.fail(500), Reply.say("second try"))
    tokens: list[str] = []

    reply = gateway_complete(
        route=lone, messages=HELLO, on_token=tokens.append if streamed else None
    )

    assert reply.content == "second try"
    assert server.count("primary") == 2
    assert reply.deployment == f"{lone.name}#1"
    assert reply.fallbacks == []
    assert reply.cost == Decimal("0.000032")  # 11 x 1e-6 + 7 x 3e-6
    assert tokens == (["second", " try"] if streamed else [])


def test_a_lone_deployments_prices_size_its_estimate_before_any_call():
    # A model litellm's cost map does not know: only the deployment's prices can price it.
    route = ModelRoute.objects.create(name=f"lone-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(
        route=route,
        position=1,
        model=f"openai/unpriced-{uuid.uuid4().hex[:8]}",
        api_base="http://127.0.0.1:9/v1",
        input_cost_per_token=Decimal("0.000001"),
        output_cost_per_token=Decimal("0.000003"),
    )

    estimate = gateway_estimate_cost(
        route=route, allowed_regions=(), prompt_tokens=11, completion_tokens=7
    )

    assert estimate == Decimal("0.000032")  # 11 x 1e-6 + 7 x 3e-6


def test_a_lone_deployment_that_keeps_failing_is_a_clear_error(server, lone):
    server.script("primary", Reply.hang(3), Reply.hang(3))

    with pytest.raises(ModelUnavailable, match=rf"route {lone.name}: no deployment answered"):
        gateway_complete(route=lone, messages=HELLO)
    assert server.count("primary") == 2  # the retry, then the error
