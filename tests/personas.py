"""The personas and governed objects every test may ask for (a pytest plugin: conftest.py): the
access matrix's rows and columns, the agents they use, and runs parked for a reviewer."""

import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group

from agents.models import Agent, Conversation, Deployment, KnowledgeBase, ModelRoute, Run
from agents.orchestrator import run_execute
from agents.services import run_start
from audit.services import SYSTEM
from governance import roles
from governance.models import Action
from governance.services import access_deny, access_grant
from tests.model_server import Reply
from tools.models import Tool


@dataclass
class People:
    admin: object
    reviewer: object
    member: object  # a member whose team holds the grant
    outsider: object  # a member without any grant
    denied: object  # in the granted team, and denied personally
    integration: object  # an integration account granted directly
    anonymous: object

    def named(self, name: str):
        return getattr(self, name)


PERSONAS = ["admin", "reviewer", "member", "outsider", "denied", "integration", "anonymous"]


def _user(name: str, *groups: Group, **extra):
    user = get_user_model().objects.create_user(
        f"{name}-{uuid.uuid4().hex[:6]}", email=f"{name}@example.com", **extra
    )
    user.groups.add(*groups)
    return user


@pytest.fixture
def role_groups():
    return {name: Group.objects.get_or_create(name=name)[0] for name in roles.ROLE_GROUPS}


@pytest.fixture
def team():
    return Group.objects.create(name=f"Sales {uuid.uuid4().hex[:4]}")


@pytest.fixture
def people(role_groups, team):
    return People(
        admin=_user("admin", role_groups[roles.GOVERNANCE_ADMIN], is_staff=True, is_superuser=True),
        reviewer=_user("reviewer", role_groups[roles.REVIEWER]),
        member=_user("member", role_groups[roles.MEMBER], team),
        outsider=_user("outsider", role_groups[roles.MEMBER]),
        denied=_user("denied", role_groups[roles.MEMBER], team),
        integration=_user("integration", role_groups[roles.INTEGRATION]),
        anonymous=AnonymousUser(),
    )


@dataclass
class Governed:
    agent: Agent
    tool: Tool
    knowledge_base: KnowledgeBase
    route: ModelRoute

    def each(self):
        return {
            "agent": self.agent,
            "tool": self.tool,
            "knowledge_base": self.knowledge_base,
            "route": self.route,
        }


@pytest.fixture
def governed(people, team):
    """One object of each governed kind: the team and the integration account may use (or
    read) each; `denied` is denied each, though the team grants it."""
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(name="Sales", slug=f"s-{uuid.uuid4().hex[:6]}", route=route)
    tool = Tool.objects.get(name="create_ticket")
    tool.enabled = True
    tool.save(update_fields=["enabled"])
    agent.tools.add(tool)
    base = KnowledgeBase.objects.create(
        name="Pricing", slug=f"p-{uuid.uuid4().hex[:6]}", owner=people.admin
    )
    objects = Governed(agent, tool, base, route)
    for obj in objects.each().values():
        action = Action.READ if obj is base else Action.USE
        access_grant(obj=obj, holder=team, action=action, actor=SYSTEM)
        access_grant(obj=obj, holder=people.integration, action=action, actor=SYSTEM)
        access_deny(obj=obj, holder=people.denied, action=action, actor=SYSTEM)
    return objects


ASKED = {"title": "VPN down"}


@pytest.fixture
def help_desk(server, team):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    agent = Agent.objects.create(name="Help desk", slug=f"h-{uuid.uuid4().hex[:6]}", route=route)
    tool = Tool.objects.get(name="create_ticket")  # risk: write
    tool.enabled = True
    tool.save(update_fields=["enabled"])
    agent.tools.add(tool)
    for obj in (agent, route, tool):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
    return agent


def parked(server, agent, user, arguments=ASKED) -> Run:
    """A run whose model asked to open a ticket: parked on the approval."""
    server.script(
        "primary", Reply.call("create_ticket", arguments), Reply.say("Ticket opened for you.")
    )
    conversation = Conversation.objects.create(owner=user, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=user, input="open a ticket")
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def resume(run: Run) -> Run:
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


@pytest.fixture
def assistant(server, team, people):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route,
        position=1,
        model="openai/primary",
        api_base=server.base("primary"),
        region="us",
        input_cost_per_token=Decimal("0.001"),
        output_cost_per_token=Decimal("0.002"),
    )
    Deployment.objects.create(
        route=route, position=2, model="openai/eu", api_base=server.base("eu"), region="eu"
    )
    agent = Agent.objects.create(
        name="Assistant",
        slug=f"a-{uuid.uuid4().hex[:6]}",
        route=route,
        confidence_threshold=0,
    )
    for obj in (agent, route):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
        access_grant(obj=obj, holder=people.integration, action=Action.USE, actor=SYSTEM)
    return agent
