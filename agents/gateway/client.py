"""litellm behind `gateway_complete`: routers, streaming, cost, the response cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch it at import

import litellm
from django.core.cache import cache

from agents.gateway import ModelReply, ModelUnavailable, ToolCall
from agents.gateway.local import register as register_local_model
from telemetry import metrics, tracing

litellm.suppress_debug_info = True
logging.getLogger("LiteLLM").setLevel(logging.WARNING)
logging.getLogger("LiteLLM Router").setLevel(logging.CRITICAL)  # failures are ours to report
register_local_model()
logger = logging.getLogger(__name__)

CACHE_PREFIX = "gateway:cache:"
STATS_PREFIX = "gateway:stats:"
_routers: dict[tuple, tuple] = {}  # (route id, regions) -> (version, CompiledRoute)
_routers_lock = threading.Lock()


def deployment_id(deployment) -> str:
    return f"{deployment.route.name}#{deployment.position}"


def _api_key(deployment) -> str:
    ref = deployment.api_key_ref.strip()
    if not ref:
        return "none"  # local servers (Ollama, vLLM) ignore it; litellm wants one
    kind, _, name = ref.partition(":")
    if kind != "env" or not name:
        raise ModelUnavailable(
            f"deployment {deployment_id(deployment)}: key reference {ref!r} is not env:NAME"
        )
    value = os.environ.get(name)
    if not value:
        raise ModelUnavailable(
            f"deployment {deployment_id(deployment)} needs the environment variable {name}"
        )
    return value


@dataclass(frozen=True)
class CompiledRoute:
    """A route ready to call: its deployment ids in preference order, which of them are the
    offline model, and either a litellm Router (several deployments) or, for a route with a
    single deployment, the parameters to call it directly. One deployment leaves a Router
    nothing to do (nothing to fall back to, and litellm never cools down a lone deployment)
    while its bookkeeping costs about a millisecond a call (bench/runtime_overhead.py); the
    retries and the timeout are then the provider client's, through litellm.completion."""

    ids: list[str]
    local: set[str]
    prices: dict[str, tuple[Decimal, Decimal]]  # id -> per input and output token, if set
    router: litellm.Router | None
    direct: dict | None
    models: dict[str, str] = field(default_factory=dict)  # id -> litellm model string


def router_for(route, allowed_regions: tuple[str, ...]) -> CompiledRoute:
    """The route compiled for the agent's allowed regions. Cached per process; saving a route
    or any of its deployments moves the route's updated_at, which rebuilds it (so a cached
    call reads no deployment row)."""
    version = _route_version(route)
    key = (route.pk, allowed_regions)
    with _routers_lock:
        cached = _routers.get(key)
        if cached and cached[0] == version:
            return cached[1]
        deployments = _deployments_in(route=route, allowed_regions=allowed_regions)
        compiled = _compile(route=route, deployments=deployments)
        _routers[key] = (version, compiled)
        return compiled


def _route_version(route) -> tuple:
    """What a compiled route was built from, besides its deployments (they move updated_at)."""
    return (
        route.updated_at,
        route.num_retries,
        route.timeout_seconds,
        route.cooldown_seconds,
        route.allowed_fails,
        route.fallbacks_enabled,
    )


def _deployments_in(*, route, allowed_regions: tuple[str, ...]) -> list:
    """The route's deployments in the allowed regions, in preference order (only the first
    without fallbacks); none is an error."""
    deployments = [
        d
        for d in route.deployments.order_by("position")
        if not allowed_regions or d.region in allowed_regions
    ]
    if not route.fallbacks_enabled:
        deployments = deployments[:1]
    if not deployments:
        raise ModelUnavailable(
            f"no deployment of route {route.name} is in an allowed region "
            f"({', '.join(allowed_regions)})"
        )
    return deployments


def _model_entry(*, route, order: int, deployment) -> dict:
    """One deployment as an entry of litellm's model list."""
    params = {"model": deployment.model, "order": order, "max_retries": 0}
    if not deployment.model.startswith("warden-local/"):
        params["api_key"] = _api_key(deployment)
    if deployment.api_base:
        params["api_base"] = deployment.api_base
    info: dict[str, str | float] = {"id": deployment_id(deployment)}
    if deployment.input_cost_per_token is not None:
        info["input_cost_per_token"] = float(deployment.input_cost_per_token)
    if deployment.output_cost_per_token is not None:
        info["output_cost_per_token"] = float(deployment.output_cost_per_token)
    return {"model_name": route.name, "litellm_params": params, "model_info": info}


def _compile(*, route, deployments: list) -> CompiledRoute:
    """A Router over several deployments; a lone deployment's parameters to call it directly."""
    model_list = [
        _model_entry(route=route, order=order, deployment=deployment)
        for order, deployment in enumerate(deployments, start=1)
    ]
    ids = [deployment_id(d) for d in deployments]
    models = {deployment_id(d): d.model for d in deployments}
    local = {deployment_id(d) for d in deployments if d.model.startswith("warden-local/")}
    prices = {
        deployment_id(d): (
            d.input_cost_per_token or Decimal(0),
            d.output_cost_per_token or Decimal(0),
        )
        for d in deployments
        if d.input_cost_per_token is not None or d.output_cost_per_token is not None
    }
    if len(model_list) == 1:
        only = model_list[0]
        direct = {k: v for k, v in only["litellm_params"].items() if k != "order"}
        priced = {k: v for k, v in only["model_info"].items() if k.endswith("_per_token")}
        if priced:  # litellm applies a price given with both halves
            direct["input_cost_per_token"] = priced.get("input_cost_per_token", 0.0)
            direct["output_cost_per_token"] = priced.get("output_cost_per_token", 0.0)
        # The provider client retries (with backoff, honouring Retry-After); litellm's
        # own num_retries would retry again around it.
        direct.update(
            max_retries=route.num_retries,
            timeout=route.timeout_seconds,
            _skip_mcp_handler=True,  # private, no public switch: see the Router's below
        )
        return CompiledRoute(ids, local, prices, None, direct, models)
    router = litellm.Router(
        model_list=model_list,
        num_retries=route.num_retries,
        timeout=route.timeout_seconds,
        allowed_fails=route.allowed_fails,
        cooldown_time=route.cooldown_seconds,
        # Private, no public switch: else a call with tools imports litellm's MCP
        # gateway (BerriAI/litellm#17747, ~4 s) for `type: mcp` tools Warden never sends.
        default_litellm_params={"_skip_mcp_handler": True},
    )
    return CompiledRoute(ids, local, prices, router, None, models)


def complete(
    *,
    route,
    messages: list[dict],
    tools: list[dict],
    allowed_regions: tuple[str, ...],
    cache_scope: str,
    on_token: Callable[[str], None] | None,
) -> ModelReply:
    compiled = router_for(route, allowed_regions)
    first = compiled.models.get(compiled.ids[0], "") if compiled.ids else ""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": _provider(first),
        "gen_ai.request.model": first,
        "warden.route": route.name,
    }
    started = time.perf_counter()
    with tracing.span(f"chat {route.name}", attributes) as span:
        if tracing.CAPTURE_CONTENT:
            span.set_attribute("gen_ai.input.messages", _captured(messages))
        try:
            reply = _complete(route, compiled, messages, tools, cache_scope, on_token)
        except ModelUnavailable:
            metrics.MODEL_CALLS.labels(route=route.name, deployment="", outcome="error").inc()
            _cooled(route, compiled)
            raise
        _observed(route, compiled, reply, span, time.perf_counter() - started)
        if reply.fallbacks:
            _cooled(route, compiled)
    return reply


_cooldowns_seen: dict[str, float] = {}  # deployment id -> when its last cooldown counted began


def _cooled(route, compiled: CompiledRoute) -> None:
    """Count each cooldown the Router put a deployment in (after a call that failed over or
    failed: only then can one have begun), once, however many calls see it."""
    if compiled.router is None:
        return  # a lone deployment is never cooled down
    try:
        active = compiled.router.cooldown_cache.get_active_cooldowns(
            model_ids=compiled.ids, parent_otel_span=None
        )
    except Exception:  # litellm's bookkeeping: never a reason for the call to fail
        logger.warning("route %s: the Router's cooldowns could not be read", route.name)
        return
    for deployment, cooldown in active:
        began = float(cooldown.get("timestamp", 0))
        if _cooldowns_seen.get(deployment) != began:
            _cooldowns_seen[deployment] = began
            metrics.MODEL_COOLDOWNS.labels(route=route.name, deployment=deployment).inc()
            tracing.event("gen_ai.cooldown", {"warden.deployment": deployment})


def _complete(route, compiled, messages, tools, cache_scope, on_token) -> ModelReply:
    ids = compiled.ids
    cache_key = None
    if route.cache_seconds:
        cache_key = _cache_key(
            route=route, ids=ids, messages=messages, tools=tools, cache_scope=cache_scope
        )
        cached = _cached_reply(cache_key=cache_key, on_token=on_token)
        if cached is not None:
            return cached
    reply = _ask(route=route, compiled=compiled, messages=messages, tools=tools, on_token=on_token)
    reply.fallbacks = ids[: ids.index(reply.deployment)] if reply.deployment in ids else []
    if cache_key is not None:
        cache.set(cache_key, _to_cache(reply), route.cache_seconds)
    return reply


def _provider(model: str) -> str:
    """The provider of a litellm model string ("openai/gpt-4o": openai; warden-local: warden)."""
    if model.startswith("warden-local/"):
        return "warden"
    return model.split("/", 1)[0] if "/" in model else "openai"


def _observed(route, compiled: CompiledRoute, reply: ModelReply, span, seconds: float) -> None:
    """The call in the metrics, and on its span (GenAI semantic conventions)."""
    deployment = reply.deployment
    outcome = "cached" if reply.cached else "ok"
    metrics.MODEL_CALLS.labels(route=route.name, deployment=deployment, outcome=outcome).inc()
    metrics.MODEL_CALL_DURATION.labels(route=route.name).observe(seconds)
    if not reply.cached:
        tokens = metrics.MODEL_TOKENS
        tokens.labels(route=route.name, deployment=deployment, direction="input").inc(
            reply.prompt_tokens
        )
        tokens.labels(route=route.name, deployment=deployment, direction="output").inc(
            reply.completion_tokens
        )
        metrics.MODEL_COST.labels(route=route.name, deployment=deployment).inc(float(reply.cost))
    for passed in reply.fallbacks:
        metrics.MODEL_FALLBACKS.labels(route=route.name, deployment=passed).inc()
    if span is None:
        return
    span.set_attributes(
        {
            "gen_ai.response.model": compiled.models.get(deployment, ""),
            "gen_ai.usage.input_tokens": reply.prompt_tokens,
            "gen_ai.usage.output_tokens": reply.completion_tokens,
            "warden.deployment": deployment,
            "warden.cached": reply.cached,
            "warden.cost_usd": float(reply.cost),
        }
    )
    for passed in reply.fallbacks:
        span.add_event("gen_ai.fallback", {"warden.deployment": passed})
    if tracing.CAPTURE_CONTENT:
        span.set_attribute("gen_ai.output.messages", _captured([reply.as_message()]))


def _captured(messages: list[dict]) -> str:
    """Messages for a span, when an admin asked for content: personal data as placeholders,
    whatever the route (the tracing backend is another place it would reach), and secrets
    (bearer tokens, credentials in URLs) scrubbed as in the audit trail."""
    from audit.pii import redact_messages
    from audit.redaction import scrub

    return scrub(json.dumps(redact_messages(messages)[0], default=str))


def _cache_key(
    *, route, ids: list[str], messages: list[dict], tools: list[dict], cache_scope: str
) -> str:
    """What the cache files an answer under: the route, its deployments, the conversation, the
    tools and the caller's scope."""
    return (
        CACHE_PREFIX
        + hashlib.sha256(
            json.dumps(
                [route.name, ids, messages, tools, cache_scope], sort_keys=True, default=str
            ).encode()
        ).hexdigest()
    )


def _cached_reply(*, cache_key: str, on_token: Callable[[str], None] | None) -> ModelReply | None:
    """The cached answer, counted as a hit and handed to `on_token` whole; None, counted as a
    miss, when there is none."""
    hit = cache.get(cache_key)
    if hit is None:
        _count("misses")
        return None
    reply = _from_cache(hit)
    _count("hits")
    _count("tokens_saved", hit["prompt_tokens"] + hit["completion_tokens"])
    if on_token and reply.content:
        on_token(reply.content)
    return reply


def _ask(
    *,
    route,
    compiled: CompiledRoute,
    messages: list[dict],
    tools: list[dict],
    on_token: Callable[[str], None] | None,
) -> ModelReply:
    """One call through the Router or directly, streamed when there is `on_token`; any failure
    of the provider's is ModelUnavailable."""
    kwargs: dict = {"messages": messages}
    if tools:
        kwargs["tools"] = tools
    if compiled.router is not None:
        call, kwargs["model"] = compiled.router.completion, route.name
    else:
        call = litellm.completion
        kwargs.update(compiled.direct or {})
    try:
        if on_token is None:
            response = call(**kwargs)
            reply = _reply(response, response._hidden_params, compiled.ids[0])
            reply.cost = _cost(response, response._hidden_params)
        else:
            reply = _streamed(call, kwargs, on_token, compiled)
            if reply.deployment in compiled.local:
                # Stream chunks carry no confidence; the offline model is deterministic, so ask
                # it for the one it gave this answer.
                from agents.gateway.local import decide

                reply.confidence = decide(messages, tools).confidence
    except ModelUnavailable:
        raise
    except Exception as exc:  # litellm's own errors, and the Router's "no deployments available"
        status = getattr(exc, "status_code", None)
        detail = f"{type(exc).__name__}" + (f" {status}" if status else "")
        raise ModelUnavailable(f"route {route.name}: no deployment answered ({detail})") from exc
    return reply


def embed(*, route, texts: list[str]) -> list[list[float]]:
    compiled = router_for(route, ())
    try:
        if compiled.router is not None:
            response = compiled.router.embedding(model=route.name, input=texts)
        else:
            direct = compiled.direct or {}
            params = {k: v for k, v in direct.items() if not k.startswith("_")}
            response = litellm.embedding(input=texts, **params)
    except Exception as exc:  # litellm's own errors
        status = getattr(exc, "status_code", None)
        detail = f"{type(exc).__name__}" + (f" {status}" if status else "")
        raise ModelUnavailable(f"route {route.name}: no deployment embedded ({detail})") from exc
    rows = sorted(response.data, key=lambda item: item["index"])
    return [row["embedding"] for row in rows]


def _streamed(send, kwargs: dict, on_token, compiled: CompiledRoute) -> ModelReply:
    """Stream one answer, handing each piece of text to `on_token` as it arrives, and put the
    reply together from the chunks (litellm's stream_chunk_builder costs ~4 ms a call)."""
    stream = send(**kwargs, stream=True, stream_options={"include_usage": True})
    text: list[str] = []
    calls: dict[int, dict] = {}
    usage = None
    for chunk in stream:
        usage = getattr(chunk, "usage", None) or usage
        for choice in chunk.choices or ():
            delta = choice.delta
            if getattr(delta, "content", None):
                text.append(delta.content)
                on_token(delta.content)
            for call in getattr(delta, "tool_calls", None) or ():
                slot = calls.setdefault(call.index or 0, {"id": "", "name": "", "arguments": ""})
                slot["id"] = call.id or slot["id"]
                if call.function is not None:
                    slot["name"] = call.function.name or slot["name"]
                    slot["arguments"] += call.function.arguments or ""
    deployment = (stream._hidden_params or {}).get("model_id") or compiled.ids[0]
    prompt = getattr(usage, "prompt_tokens", 0) or 0
    completion = getattr(usage, "completion_tokens", 0) or 0
    cost = _stream_cost(compiled, deployment, prompt, completion)
    return ModelReply(
        content="".join(text),
        tool_calls=[
            ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"])
            for i, c in sorted(calls.items())
        ],
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost,
        deployment=deployment,
    )


def estimate_cost(
    *, route, allowed_regions: tuple[str, ...], prompt_tokens: int, completion_tokens: int
) -> Decimal:
    compiled = router_for(route, allowed_regions)
    return max(
        (_stream_cost(compiled, d, prompt_tokens, completion_tokens) for d in compiled.ids),
        default=Decimal(0),
    )


def _stream_cost(compiled: CompiledRoute, deployment: str, prompt: int, completion: int) -> Decimal:
    price = compiled.prices.get(deployment)
    value: Decimal | float
    if price is not None:
        value = prompt * price[0] + completion * price[1]
    else:
        # The Router registers each deployment's model under its id; a direct call, its own.
        model = deployment if compiled.router is not None else (compiled.direct or {})["model"]
        try:
            value = sum(
                litellm.cost_per_token(
                    model=model, prompt_tokens=prompt, completion_tokens=completion
                )
            )
        except Exception:  # a model litellm's cost map does not know, with no price set
            value = 0
    return Decimal(str(value)).quantize(Decimal("0.000001"))


def _reply(response, hidden: dict, first: str) -> ModelReply:
    message = response.choices[0].message
    calls = [
        ToolCall(call.id or f"call_{i}", call.function.name or "", call.function.arguments or "")
        for i, call in enumerate(getattr(message, "tool_calls", None) or [])
    ]
    usage = getattr(response, "usage", None)
    reply = ModelReply(
        content=message.content or "",
        tool_calls=calls,
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        cost=Decimal(0),
        deployment=(hidden or {}).get("model_id") or first,
        confidence=(getattr(response, "_hidden_params", None) or {}).get("warden_confidence"),
    )
    return reply


def _cost(response, hidden: dict) -> Decimal:
    value = (hidden or {}).get("response_cost")
    if value is None:  # not priced during the call (0 is a price: free or unknown)
        try:
            value = litellm.completion_cost(completion_response=response)
        except Exception:  # a model litellm's cost map does not know, with no price set
            value = 0
    return Decimal(str(value or 0)).quantize(Decimal("0.000001"))


def _to_cache(reply: ModelReply) -> dict:
    return {
        "content": reply.content,
        "tool_calls": [[c.id, c.name, c.arguments] for c in reply.tool_calls],
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "deployment": reply.deployment,
        "confidence": reply.confidence,
    }


def _from_cache(hit: dict) -> ModelReply:
    return ModelReply(
        content=hit["content"],
        tool_calls=[ToolCall(*call) for call in hit["tool_calls"]],
        prompt_tokens=0,
        completion_tokens=0,
        cost=Decimal(0),
        deployment=hit["deployment"],
        cached=True,
        confidence=hit["confidence"],
    )


def _count(name: str, amount: int = 1) -> None:
    if result := {"hits": "hit", "misses": "miss"}.get(name):
        metrics.MODEL_CACHE.labels(result=result).inc()
    key = STATS_PREFIX + name
    cache.add(key, 0, timeout=None)
    cache.incr(key, amount)


def cache_stats() -> dict[str, int]:
    return {name: cache.get(STATS_PREFIX + name, 0) for name in ("hits", "misses", "tokens_saved")}
