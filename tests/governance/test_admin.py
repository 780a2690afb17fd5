"""Governance in the admin: the Access page of a governed object grants and denies (audited,
with the admin as actor), denials are listed, approvals are decided, budgets are checked."""

import json

import pytest
from auditlog.models import LogEntry
from django.urls import reverse

from audit.models import AuditEvent
from governance.access import may
from governance.models import AccessDenial, Action, ApprovalRequest, ApprovalStatus, Budget
from tests.governance.conftest import parked

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, people):
    client.force_login(people.admin)
    return client


def test_the_access_page_grants_and_denies_a_user_and_audits_it(admin_client, people, governed):
    agent = governed.agent
    page = reverse("admin:agents_agent_permissions", args=[agent.pk])
    manage = reverse(
        "admin:agents_agent_permissions_manage_user", args=[agent.pk, people.outsider.pk]
    )

    listing = admin_client.get(page)
    chosen = admin_client.post(page, {"user": people.outsider.username, "submit_manage_user": "1"})
    granted = admin_client.post(manage, {"permissions": ["grant"]})
    may_after_grant = may(people.outsider, agent, Action.USE)
    denied = admin_client.post(manage, {"permissions": ["grant", "deny"]})

    assert listing.status_code == 200
    assert f"{people.denied.username}</td><td>use" in listing.content.decode()
    assert chosen.status_code == 302
    assert chosen.url == manage
    assert granted.status_code == denied.status_code == 302
    assert may_after_grant
    assert not may(people.outsider, agent, Action.USE)
    assert AccessDenial.objects.filter(user=people.outsider, object_id=agent.pk).exists()
    assert people.outsider.username in admin_client.get(page).content.decode()
    form = admin_client.get(manage).content.decode()
    assert "May use it" in form
    assert "Denied: may not use it" in form
    events = AuditEvent.objects.filter(
        target_id=str(agent.pk), action__in=["access.granted", "access.denied"]
    ).order_by("sequence")
    mine = [e for e in events if json.loads(e.data)["holder_name"] == people.outsider.username]
    assert [(e.action, e.actor_id) for e in mine] == [
        ("access.granted", str(people.admin.pk)),
        ("access.denied", str(people.admin.pk)),
    ]

    # nothing ticked: a browser posts only its CSRF token
    admin_client.post(manage, {"csrfmiddlewaretoken": "from-the-page"})
    assert not AccessDenial.objects.filter(user=people.outsider).exists()
    assert not may(people.outsider, agent, Action.USE)  # the grant went too


def test_a_team_is_granted_a_knowledge_base_on_its_page(admin_client, people, governed):
    from django.contrib.auth.models import Group

    readers = Group.objects.create(name="Readers")
    people.outsider.groups.add(readers)
    base = governed.knowledge_base
    manage = reverse(
        "admin:agents_knowledgebase_permissions_manage_group", args=[base.pk, readers.pk]
    )

    response = admin_client.post(manage, {"permissions": ["grant"]})

    assert response.status_code == 302
    assert may(people.outsider, base, Action.READ)
    assert "May read it" in admin_client.get(manage).content.decode()


def test_approvals_are_decided_from_the_admin_with_four_eyes(client, server, help_desk, people):
    run = parked(server, help_desk, people.admin)  # the admin asked for this one
    request = ApprovalRequest.objects.get(run_id=run.pk)
    changelist = reverse("admin:governance_approvalrequest_changelist")
    client.force_login(people.admin)

    own = client.post(
        changelist, {"action": "approve", "_selected_action": [request.pk]}, follow=True
    )

    assert "another reviewer must decide it" in own.content.decode()
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.PENDING
    people.reviewer.is_staff = True
    people.reviewer.is_superuser = True
    people.reviewer.save()
    client.force_login(people.reviewer)
    client.post(changelist, {"action": "reject", "_selected_action": [request.pk]})
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.REJECTED


def test_a_budget_names_one_subject_and_a_limit(admin_client, people, team):
    add = reverse("admin:governance_budget_add")
    base = {"name": "Sales", "period": "month", "notify_at_percent": 80, "hard": "on"}

    both = admin_client.post(
        add, {**base, "user": people.member.pk, "group": team.pk, "max_tokens": 10}
    )
    none = admin_client.post(add, {**base, "group": team.pk})
    good = admin_client.post(add, {**base, "group": team.pk, "max_cost": "25.00", "enabled": "on"})

    assert "exactly one user, one team or one agent" in both.content.decode()
    assert "Give a token limit, a cost limit, or both." in none.content.decode()
    assert good.status_code == 302
    budget = Budget.objects.get()
    assert (budget.group, budget.max_cost, budget.max_tokens) == (team, 25, None)
    listing = admin_client.get(reverse("admin:governance_budget_changelist")).content.decode()
    assert f"team {team.name}" in listing
    assert "nothing yet" in listing
    history = LogEntry.objects.get_for_object(budget)  # django-auditlog's field history
    assert history.get().changes_dict["max_cost"] == ["None", "25.00"]


def test_a_denial_whose_object_was_deleted_can_still_be_removed(admin_client, people, governed):
    from agents.models import Agent
    from audit.services import SYSTEM
    from governance.services import access_deny

    gone = Agent.objects.create(name="Gone", slug="gone", route=governed.route)
    access_deny(obj=gone, holder=people.member, action=Action.USE, actor=SYSTEM)
    denial = AccessDenial.objects.get(object_id=gone.pk, user=people.member)
    gone.delete()

    response = admin_client.post(
        reverse("admin:governance_accessdenial_delete", args=[denial.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not AccessDenial.objects.filter(pk=denial.pk).exists()


def test_a_governed_objects_page_says_who_may_use_it(admin_client, people, governed, team):
    page = admin_client.get(reverse("admin:agents_agent_change", args=[governed.agent.pk]))

    summary = page.content.decode().split('id="access-summary">', 1)[1].split("</p>", 1)[0]
    assert f"groups {team.name}" in summary
    assert f"users {people.integration.username}" in summary
    assert f"<strong>Denied:</strong> {people.denied.username}." in summary
    base = admin_client.get(
        reverse("admin:agents_knowledgebase_change", args=[governed.knowledge_base.pk])
    )
    assert "Who may read it:" in base.content.decode()
