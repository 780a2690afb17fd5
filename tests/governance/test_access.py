"""The access matrix: every governed resource by every persona, through the one check per
resource and the list filter, which must agree; then deny-wins, ownership, model-wide grants,
and the interfaces (starting a run, the tools offered, retrieval) going through them."""

import json

import pytest
from django.contrib.auth.models import Group

from agents.knowledge.selectors import readable_ids
from agents.models import Agent, Conversation, KnowledgeBase, ModelRoute, Run
from agents.orchestrator import _offered
from agents.services import RunDenied, run_start
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance.access import (
    NoAccess,
    access_agent,
    access_knowledge_base,
    access_route,
    access_tool,
    may,
)
from governance.models import AccessDenial, Action
from governance.services import access_deny, access_grant, access_undeny
from tests.personas import PERSONAS
from tools.models import Tool

pytestmark = pytest.mark.django_db

CHECKS = {
    "agent": (access_agent, Agent, Action.USE),
    "tool": (access_tool, Tool, Action.USE),
    "knowledge_base": (access_knowledge_base, KnowledgeBase, Action.READ),
    "route": (access_route, ModelRoute, Action.USE),
}

# Who may act on each resource in the fixture: the same row for every resource.
EXPECTED = {
    "admin": True,  # superuser
    "reviewer": False,  # a role is not a grant
    "member": True,  # through the team's grant
    "outsider": False,  # no grant
    "denied": False,  # the team grants, the personal denial wins
    "integration": True,  # a direct grant
    "anonymous": False,
}


@pytest.mark.parametrize("resource", list(CHECKS))
@pytest.mark.parametrize("persona", PERSONAS)
def test_access_matrix(people, governed, resource, persona):
    check, model, action = CHECKS[resource]
    user = people.named(persona)
    obj = governed.each()[resource]

    listed = obj.pk in set(model.objects.restrict(user, action).values_list("pk", flat=True))
    try:
        checked = check(user, obj.pk) == obj
    except NoAccess:
        checked = False

    assert (checked, listed, may(user, obj, action)) == (EXPECTED[persona],) * 3


@pytest.mark.parametrize("resource", list(CHECKS))
def test_missing_and_forbidden_look_the_same(people, governed, resource):
    check, model, _ = CHECKS[resource]
    obj = governed.each()[resource]
    missing = model.objects.order_by("-pk").first().pk + 1000

    with pytest.raises(NoAccess) as forbidden:
        check(people.outsider, obj.pk)
    with pytest.raises(NoAccess) as absent:
        check(people.outsider, missing)
    with pytest.raises(NoAccess) as garbage:
        check(people.outsider, "1; DROP TABLE x")

    noun = {"knowledge_base": "knowledge base", "route": "model route"}.get(resource, resource)
    assert str(forbidden.value) == str(absent.value) == str(garbage.value) == f"no such {noun}"


def test_a_group_denial_wins_over_a_personal_grant_and_over_superuser(people, governed):
    contractors = Group.objects.create(name="Contractors")
    people.outsider.groups.add(contractors)
    people.admin.groups.add(contractors)
    access_grant(obj=governed.agent, holder=people.outsider, action=Action.USE, actor=SYSTEM)
    assert may(people.outsider, governed.agent, Action.USE)

    access_deny(obj=governed.agent, holder=contractors, action=Action.USE, actor=SYSTEM)

    assert not may(people.outsider, governed.agent, Action.USE)
    assert not may(people.admin, governed.agent, Action.USE)
    assert may(people.member, governed.agent, Action.USE)  # not a contractor

    access_undeny(obj=governed.agent, holder=contractors, action=Action.USE, actor=SYSTEM)
    assert may(people.outsider, governed.agent, Action.USE)


def test_a_model_wide_permission_grants_every_object_but_not_past_a_denial(people, governed):
    from django.contrib.auth.models import Permission

    people.outsider.user_permissions.add(Permission.objects.get(codename="use_agent"))
    other = Agent.objects.create(name="Other", slug="other", route=governed.route)

    assert set(Agent.objects.restrict(people.outsider, Action.USE)) == {governed.agent, other}
    people.denied.user_permissions.add(Permission.objects.get(codename="use_agent"))
    assert set(Agent.objects.restrict(people.denied, Action.USE)) == {other}


def test_the_owner_reads_their_knowledge_base_and_nobody_else_by_ownership(people, governed):
    own = KnowledgeBase.objects.create(name="Mine", slug="mine", owner=people.outsider)

    assert readable_ids(people.outsider) == [own.pk]
    assert own.pk not in readable_ids(people.reviewer)


def test_grants_and_denials_are_audited_with_their_actor(people, governed):
    access_grant(obj=governed.agent, holder=people.reviewer, action=Action.USE, actor=people.admin)
    access_deny(obj=governed.agent, holder=people.reviewer, action=Action.USE, actor=people.admin)

    events = list(
        AuditEvent.objects.filter(target_id=str(governed.agent.pk), action__startswith="access.")
        .filter(actor_id=str(people.admin.pk))
        .values_list("action", flat=True)
        .order_by("sequence")
    )
    assert events == ["access.granted", "access.denied"]
    assert AccessDenial.objects.get(user=people.reviewer).created_by == people.admin


def test_an_inactive_user_has_no_access(people, governed):
    people.member.is_active = False
    people.member.save(update_fields=["is_active"])

    assert not may(people.member, governed.agent, Action.USE)


# The interfaces go through the checks.


def test_starting_a_run_without_access_is_refused_as_a_missing_agent_and_audited(
    people, governed, django_capture_on_commit_callbacks
):
    for persona in ["outsider", "denied", "reviewer"]:
        user = people.named(persona)
        conversation = Conversation.objects.create(owner=user, agent=governed.agent)
        with (
            django_capture_on_commit_callbacks() as enqueued,
            pytest.raises(RunDenied, match=r"^no such agent$"),
        ):
            run_start(agent=governed.agent, conversation=conversation, actor=user, input="hi")
        assert enqueued == []

    assert not Run.objects.exists()
    audited = AuditEvent.objects.filter(action="policy.decided").values_list("data", flat=True)
    decisions = [json.loads(data) for data in audited]
    assert [(d["effect"], d["reasons"][0]) for d in decisions] == [("deny", "agent.forbidden")] * 3


def test_a_granted_member_starts_a_run(people, governed, django_capture_on_commit_callbacks):
    conversation = Conversation.objects.create(owner=people.member, agent=governed.agent)

    with django_capture_on_commit_callbacks() as enqueued:
        run = run_start(
            agent=governed.agent, conversation=conversation, actor=people.member, input="hi"
        )

    assert run.state == "queued"
    assert len(enqueued) == 1


def test_without_the_route_the_run_is_refused_with_a_reason(people, governed):
    access_deny(obj=governed.route, holder=people.member, action=Action.USE, actor=SYSTEM)
    conversation = Conversation.objects.create(owner=people.member, agent=governed.agent)

    with pytest.raises(RunDenied, match="the agent's model is not available to you"):
        run_start(agent=governed.agent, conversation=conversation, actor=people.member, input="x")

    assert not Run.objects.exists()


def test_the_model_is_offered_only_the_tools_the_actor_may_use(people, governed):
    access_deny(obj=governed.tool, holder=people.member, action=Action.USE, actor=SYSTEM)

    assert list(_offered(governed.agent, people.integration)) == ["create_ticket"]
    assert list(_offered(governed.agent, people.member)) == []
    assert list(_offered(governed.agent, people.outsider)) == []
