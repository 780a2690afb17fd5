"""Governance in the admin: denials are listed, approvals are decided, budgets are checked (the
Access pages: test_access_page.py)."""

import pytest
from auditlog.models import LogEntry
from django.urls import reverse

from governance.models import AccessDenial, Action, ApprovalRequest, ApprovalStatus, Budget
from tests.personas import parked

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, people):
    client.force_login(people.admin)
    return client


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
