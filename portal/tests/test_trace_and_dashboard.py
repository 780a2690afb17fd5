"""The run trace page and the admin console's dashboard."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from agents.models import Conversation, Run, RunStep
from governance.approvals import approval_decide
from governance.models import ApprovalRequest
from tests.personas import parked, resume

pytestmark = pytest.mark.django_db


def _run(people, agent, **fields) -> Run:
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    return Run.objects.create(
        agent=agent, conversation=conversation, actor=people.member, input="q", **fields
    )


def _model_step(run, index, **output) -> RunStep:
    now = timezone.now()
    return RunStep.objects.create(
        run=run,
        index=index,
        kind="model",
        output={"content": "a", "tool_calls": [], **output},
        started_at=now - timedelta(milliseconds=250),
        finished_at=now,
        prompt_tokens=100,
        completion_tokens=20,
        cost=Decimal("0.0125"),
        deployment=output.get("deployment", ""),
    )


def test_the_trace_shows_steps_policy_approvals_and_audit(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(
        approval_id=request.pk, decided_by=people.reviewer, approve=True, comment="go ahead"
    )
    resume(run)
    client.force_login(people.member)

    page = client.get(f"/runs/{run.pk}/").content.decode()

    kinds = re.findall(r"<td>\d+</td>\s*<td>(\w+)</td>", page)
    assert kinds == ["model", "approval", "tool", "model"]
    assert "calls create_ticket" in page
    served = RunStep.objects.filter(run=run, kind="model").values_list("deployment", flat=True)
    assert served[0]
    assert f"<td>{served[0]}" in page
    assert "on run.start: <strong>allow</strong>" in page
    assert "on the call to create_ticket: <strong>require_approval</strong>" in page
    assert "create_ticket: approved by" in page
    assert "go ahead" in page
    for action in ("run.queued", "approval.requested", "approval.approved", "run.succeeded"):
        assert action in page
    assert "/admin/audit/auditevent/" not in page  # a member is not shown admin links


def test_the_trace_names_the_fallback_and_timings(client, people, help_desk):
    run = _run(people, help_desk, state="succeeded", answer="a")
    _model_step(run, 0, deployment="eu-1", fallbacks=["primary-0"], cached=False)
    client.force_login(people.admin)

    page = client.get(f"/runs/{run.pk}/").content.decode()

    assert "eu-1" in page
    assert "after fallback from primary-0" in page
    assert "250 ms" in page
    assert "$0.012500" in page


def test_a_moment_reads_the_same_in_the_admin_and_the_trace_with_its_time_zone(
    client, people, help_desk, settings
):
    settings.TIME_ZONE = "Europe/Berlin"
    run = _run(people, help_desk, state="succeeded", answer="a")
    Run.objects.filter(pk=run.pk).update(created_at=datetime(2026, 12, 3, 20, 14, 5, tzinfo=UTC))
    client.force_login(people.admin)

    trace = client.get(f"/runs/{run.pk}/").content.decode()
    admin = client.get("/admin/agents/run/").content.decode()

    assert "<dd>2026-12-03 21:14:05 CET</dd>" in trace
    assert "2026-12-03 21:14:05 CET" in admin
    assert "p.m." not in admin


def test_who_may_see_a_trace(client, people, help_desk, server):
    run = parked(server, help_desk, people.member)
    allowed = {
        "member": True,  # the owner
        "reviewer": True,  # reviews its approval
        "admin": True,  # superuser: view_run
        "outsider": False,
        "integration": False,
    }
    for name, may in allowed.items():
        client.force_login(people.named(name))
        status = client.get(f"/runs/{run.pk}/").status_code
        assert status == (200 if may else 404), name
    auditor = people.outsider
    auditor.user_permissions.add(Permission.objects.get(codename="view_run"))
    client.force_login(auditor)
    assert client.get(f"/runs/{run.pk}/").status_code == 200


def test_the_dashboard_counts_runs_failures_approvals_spend_cache_and_fallbacks(
    client, people, help_desk, team, server
):
    ok = _run(people, help_desk, state="succeeded", cost=Decimal("1.50"), prompt_tokens=10)
    _model_step(ok, 0, deployment="primary-0", cached=True)
    failed = _run(people, help_desk, state="failed", cost=Decimal("0.25"))
    _model_step(failed, 0, deployment="eu-1", fallbacks=["primary-0"])
    _run(people, help_desk, state="rejected")
    old = _run(people, help_desk, state="succeeded", cost=Decimal("9"))
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=30))
    waiting = parked(server, help_desk, people.member)  # one more run, one pending approval
    Run.objects.filter(pk=waiting.pk).update(cost=0)  # litellm's own price for it varies
    client.force_login(people.admin)

    page = client.get("/admin/").content.decode()

    def figure(name: str) -> str:
        found = re.search(rf'data-figure="{name}">([^<]+)<', page)
        assert found, name
        return found.group(1)

    assert figure("runs") == "4"  # the 30-day-old run is outside the window
    assert figure("failures") == "2"
    assert figure("cost") == "$1.75"
    assert figure("pending-approvals") == "1"
    assert figure("pending-answers") == "0"
    assert figure("cache-rate") == "33%"  # 1 of 3 model calls (the parked run made one)
    assert figure("fallbacks") == "1"
    assert page.count('<svg class="chart"') == 3
    team_bar = page.split(f"{team.name}</text>", 1)[1].split("</g>", 1)[0]
    assert "$1.7500 · " in team_bar  # spend per team: the member's team
    assert "Help desk</text>" in page  # spend per agent
    assert "Recent audit events" in page  # the admin's own index is still there, its side
    assert 'href="/admin/dashboard/"' in page  # panel fed by the trail; the full dashboard


def test_a_reviewer_sees_the_trace_but_not_passages_they_may_not_read(client, people, help_desk):
    from agents.models import KnowledgeBase
    from tests.access import grant

    run = _run(people, help_desk, state="succeeded", answer="a")
    hidden = KnowledgeBase.objects.create(name="HR", slug="hr-x", owner=people.admin)
    shared = KnowledgeBase.objects.create(name="FAQ", slug="faq-x", owner=people.admin)
    grant(people.reviewer, shared)
    passages = [
        {
            "n": 1,
            "title": "Salaries",
            "position": 0,
            "text": "CEO earns a lot.",
            "knowledge_base": hidden.pk,
        },
        {
            "n": 2,
            "title": "VPN",
            "position": 0,
            "text": "Restart the client.",
            "knowledge_base": shared.pk,
        },
    ]
    now = timezone.now()
    RunStep.objects.create(
        run=run,
        index=0,
        kind="retrieval",
        output={"passages": passages},
        started_at=now,
        finished_at=now,
    )
    people.reviewer.user_permissions.add(Permission.objects.get(codename="view_run"))
    client.force_login(people.reviewer)

    page = client.get(f"/runs/{run.pk}/").content.decode()

    assert "CEO earns a lot." not in page
    assert "Salaries" not in page  # nor its title
    assert "(from a knowledge base you may not read)" in page
    assert "Restart the client." in page
    client.force_login(people.member)  # the run's owner read them in the run itself
    assert "CEO earns a lot." in client.get(f"/runs/{run.pk}/").content.decode()


def test_the_dashboard_is_only_for_those_who_may_view_runs(client, people):
    people.outsider.is_staff = True
    people.outsider.save()
    client.force_login(people.outsider)
    page = client.get("/admin/").content.decode()
    assert "data-figure" not in page


def test_the_trace_names_the_run_s_trace_in_the_tracing_backend(client, people, help_desk):
    traced = _run(people, help_desk, trace_parent=f"00-{'ab' * 16}-{'cd' * 8}-01")
    untraced = _run(people, help_desk)  # started while tracing was off
    client.force_login(people.member)

    page = client.get(f"/runs/{traced.pk}/").content.decode()
    plain = client.get(f"/runs/{untraced.pk}/").content.decode()

    assert f"<code data-trace-id>{'ab' * 16}</code>" in page
    assert "data-trace-id" not in plain
