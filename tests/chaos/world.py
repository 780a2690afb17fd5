"""The world a chaos test needs inside a Warden under test, made by running this module as a
process with that Warden's environment (DJANGO_SETTINGS_MODULE=config.settings, its
WARDEN_VAR_DIR): a model route on the harness's scripted model server, an HTTP tool on its
counting endpoint, an agent using both that needs no reviewer, and an API token of `member`.

    python -m tests.chaos.world --model-base http://127.0.0.1:P/chaos/v1 --effect-url URL

Prints one JSON line: {"agent": slug, "token": secret, "tool": name}. Idempotent (a rerun
updates the route and the tool and makes a new token).
"""

from __future__ import annotations

import argparse
import json

AGENT = "chaos"
TOOL = "chaos_effect"


def build(*, model_base: str, effect_url: str) -> dict:
    from django.contrib.auth import get_user_model

    from agents.models import Agent, Deployment, ModelRoute
    from integrations.tokens import token_create
    from tests.access import grant_agent
    from tools.models import Approval, RiskTier, Tool

    # external=False: no redaction round trip; num_retries=0: the scripted server's delays
    # are what the test asked for, not multiplied by litellm's retries.
    route, _ = ModelRoute.objects.update_or_create(
        name="chaos", defaults={"num_retries": 0, "timeout_seconds": 60, "external": False}
    )
    Deployment.objects.update_or_create(
        route=route, position=1, defaults={"model": "openai/chaos", "api_base": model_base}
    )
    tool = Tool.objects.filter(name=TOOL).first() or Tool(name=TOOL)
    tool.description = "Record an effect in the chaos endpoint (slow, counts calls per key)."
    tool.kind = "http"
    tool.parameters = {
        "type": "object",
        "properties": {"note": {"type": "string"}, "delay": {"type": "number"}},
        "required": ["note"],
    }
    # POST without retries: the executor sends the call once per attempt, so every request the
    # endpoint sees is one start of the call by a worker.
    tool.config = {
        "method": "POST",
        "url": effect_url,
        "retries": 0,
        "allow_networks": ["127.0.0.1/32"],
    }
    # A write that needs no reviewer: the runs go end to end with nobody in the loop.
    tool.risk = RiskTier.WRITE
    tool.approval = Approval.NEVER
    tool.timeout = 600
    tool.enabled = True
    tool.full_clean()
    tool.save()
    agent, _ = Agent.objects.update_or_create(
        slug=AGENT,
        defaults={"name": "Chaos", "route": route, "confidence_threshold": 0, "max_steps": 8},
    )
    agent.tools.set([tool])
    member = get_user_model().objects.get(username="member")
    grant_agent(member, agent)
    _, secret = token_create(user=member, name="chaos", scopes=["agents:run", "runs:read"], days=1)
    return {"agent": agent.slug, "token": secret, "tool": tool.name}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-base", required=True)
    parser.add_argument("--effect-url", required=True)
    args = parser.parse_args()
    import django

    django.setup()
    print(json.dumps(build(model_base=args.model_base, effect_url=args.effect_url)))


if __name__ == "__main__":
    main()
