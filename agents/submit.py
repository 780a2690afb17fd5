"""The one front door for runs: the chat, the REST API and the OpenAI-compatible endpoint each
parse their own request, then call `run_submit`, which holds every rule of starting a run.

The rules, each stated once: the message (agents.services.input_check: not empty, at most
MAX_INPUT characters, text PostgreSQL can keep), the conversation (the actor's own with this
agent, or a new one titled by `conversation_title`, saved only with its run), the idempotency
key (`IDEMPOTENCY_KEY`'s form, scoped to the client and the surface, bound to a digest of the
request), then the start decision (agents.services.run_start: policy, budgets, guardrails,
rate limits, audit). A refusal is one of agents.services.RunError's kinds, each with a stable
`code`; integrations.api.problems says once how each surface answers it. Nothing is written on a
refusal but the policy's audited decision.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from agents.models import Agent, Conversation, Run, RunKind
from agents.selectors import access_conversation
from agents.services import (
    MAX_INPUT,
    ConversationNotFound,
    IdempotencyKeyInvalid,
    run_start,
)
from governance.access import NoAccess

__all__ = ["IDEMPOTENCY_KEY", "MAX_INPUT", "TITLE_LENGTH", "conversation_title", "run_submit"]

TITLE_LENGTH = 80
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,100}")  # printable ASCII, no spaces
IDEMPOTENCY_KEY_RULE = "at most 100 printable ASCII characters, no spaces"


def conversation_title(text: str) -> str:
    """A new conversation's title: the first message's words, on one line."""
    return " ".join(text.split())[:TITLE_LENGTH]


def run_submit(
    *,
    actor: Any,
    agent: Agent,
    input: str,
    conversation: int | str | None = None,
    idempotency_key: str = "",
    surface: str = "runs",
    client_application_id: int | None = None,
    stream: bool = True,
    here: bool = False,
    kind: str = RunKind.AGENT,
    client: str = "",
    builder_test: bool = False,
) -> Run:
    """Start a run of `agent` (which the caller found through an access check) on the actor's
    message, in their conversation `conversation` (an id; as a form sent it, text is parsed,
    and what is no id is missing) or a new one. `idempotency_key` is the client's raw key ('' for
    none); keys are the client's (the OAuth2 application `client_application_id`, or the
    user) on one `surface`, so one client's retry never meets another's run. The run's
    `replayed` is set when the key answered an earlier run. `here`: the caller waits for the
    answer in this process (agents.services.run_start says what follows); `kind` and `client`
    say who asked (an MCP client, by name); `builder_test`: a new conversation is the agent
    builder's test (kept out of the chat list). Raises RunError's kinds."""
    key = scoped_key(idempotency_key, surface, client_application_id)
    if conversation is None:  # saved with its run: a refusal leaves no empty conversation
        found = Conversation(
            owner=actor, agent=agent, title=conversation_title(input), builder_test=builder_test
        )
    else:
        try:
            found = access_conversation(actor, conversation)
        except NoAccess:
            raise ConversationNotFound() from None
    asked: dict[str, object] = {"agent": agent.slug, "input": input}
    if conversation is not None:
        asked["conversation"] = found.pk
    return run_start(
        agent=agent,
        conversation=found,
        actor=actor,
        input=input,
        idempotency_key=key,
        fingerprint=_fingerprint(asked) if key else "",
        stream=stream,
        client_application_id=client_application_id,
        here=here,
        kind=kind,
        client=client,
    )


def scoped_key(raw: str, surface: str, client_application_id: int | None) -> str:
    """The key as stored: scoped to the client and the surface; '' without one."""
    if not raw:
        return ""
    if not IDEMPOTENCY_KEY.fullmatch(raw):
        raise IdempotencyKeyInvalid(IDEMPOTENCY_KEY_RULE)
    client = f"app{client_application_id}" if client_application_id else "user"
    return f"{client}:{surface}:{raw}"


def _fingerprint(asked: dict[str, object]) -> str:
    """A digest of what an idempotent request asked for (the same key must ask the same)."""
    canonical = json.dumps(asked, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
