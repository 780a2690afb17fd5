"""Regenerate: ask the agent the same message again, in the same conversation, through the one
front door (agents.submit.run_submit: policy, budgets, guardrails, audit, as any message).

Only the conversation's latest run, once it ended (answered, failed, stopped or refused): an
earlier answer has been built on since, and a run still going is stopped first. The new run
carries the idempotency key `regenerate-<run id>`: a second click on the same button answers
the run the first one started instead of asking twice.
"""

from __future__ import annotations

from typing import Any

from agents.models import FINAL_STATES, Run, RunKind
from agents.selectors import access_run
from agents.services import RunError
from agents.submit import run_submit, scoped_key
from governance.access import access_agent


class NotRegenerable(RunError):
    """The run cannot be asked again: not a chat run, not ended, or not the latest."""

    code = "run_not_regenerable"


def run_regenerate(*, actor: Any, run_id: object) -> Run:
    """A new run of the run `run_id`'s agent on its message, in its conversation. NoAccess when
    the actor may not see the run or no longer may use its agent; NotRegenerable, or the front
    door's refusals (RunError), when it cannot be asked again."""
    run = access_run(actor, run_id)
    if run.kind != RunKind.AGENT or run.agent_id is None or run.conversation_id is None:
        raise NotRegenerable("only an answer in a conversation can be regenerated")
    if run.state not in FINAL_STATES:
        raise NotRegenerable("the run is still going: stop it first")
    latest = (
        Run.objects.filter(conversation_id=run.conversation_id)
        .order_by("-created_at", "-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if latest != run.pk:
        # The key finds the run a first click started (the button was clicked twice).
        key = scoped_key(_key(run), "chat", None)
        again = Run.objects.filter(actor=actor, idempotency_key=key).first()
        if again is not None:
            again.replayed = True
            return again
        raise NotRegenerable("only the conversation's latest answer can be regenerated")
    agent = access_agent(actor, run.agent_id)
    return run_submit(
        actor=actor,
        agent=agent,
        input=run.input,
        conversation=run.conversation_id,
        idempotency_key=_key(run),
        surface="chat",
    )


def _key(run: Run) -> str:
    return f"regenerate-{run.pk}"
