"""Grants for tests: what a governance admin would give in the admin."""

from audit.services import SYSTEM
from governance.models import Action
from governance.services import access_grant


def grant(holder, *objects) -> None:
    """Let `holder` (a user or group) use each object, or read it for a knowledge base."""
    for obj in objects:
        action = Action.READ if obj._meta.model_name == "knowledgebase" else Action.USE
        access_grant(obj=obj, holder=holder, action=action, actor=SYSTEM)


def grant_agent(holder, agent) -> None:
    """What a run of `agent` needs: the agent, its route and its tools (knowledge bases are
    granted on their own: who reads which is what retrieval tests are about)."""
    grant(holder, agent, agent.route, *agent.tools.all())
