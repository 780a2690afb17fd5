"""The model gateway: the only code that imports litellm (lazily: importing it costs ~2 s).

`gateway_complete` sends one model step through a `litellm.Router` built from a `ModelRoute`:
deployments are tried in position order (litellm's `order`), a failing deployment is retried
`num_retries` times and then put in cooldown after `allowed_fails` failures, and the next
deployment answers. Only deployments in the agent's allowed regions are part of the router.
A route left with one deployment is called directly, with the same retries and timeout: a
Router would have nothing to route (see `client.CompiledRoute`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal


class ModelUnavailable(Exception):
    """No deployment of the route could answer; the message says why, without secrets."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the raw JSON text the model produced; it may be malformed


@dataclass
class ModelReply:
    content: str
    tool_calls: list[ToolCall]
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    deployment: str  # the id of the deployment that answered
    fallbacks: list[str] = field(default_factory=list)  # preferred deployments that did not
    cached: bool = False
    confidence: float | None = None  # set by models that report one (warden-local)

    def as_message(self) -> dict:
        message: dict = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        return message


def gateway_complete(
    *,
    route,
    messages: list[dict],
    tools: list[dict] | None = None,
    allowed_regions: tuple[str, ...] | list[str] = (),
    cache_scope: str = "",
    on_token: Callable[[str], None] | None = None,
) -> ModelReply:
    """One model step. `cache_scope` names who may share cached answers (callers pass a
    fingerprint of the actor's permissions); `on_token` receives streamed text as it comes."""
    from agents.gateway.client import complete

    return complete(
        route=route,
        messages=messages,
        tools=tools or [],
        allowed_regions=tuple(allowed_regions),
        cache_scope=cache_scope,
        on_token=on_token,
    )


def gateway_estimate_cost(
    *, route, allowed_regions: tuple[str, ...], prompt_tokens: int, completion_tokens: int
) -> Decimal:
    """What a call of this size costs at most, on the dearest deployment it may reach (for a
    budget's reservation; 0 where no price is known)."""
    from agents.gateway.client import estimate_cost

    return estimate_cost(
        route=route,
        allowed_regions=tuple(allowed_regions),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def gateway_embed(*, route, texts: list[str]) -> list[list[float]]:
    """Embeddings of `texts` from the route's deployments (in order, with its fallbacks)."""
    from agents.gateway.client import embed

    return embed(route=route, texts=texts)
