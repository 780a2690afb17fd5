"""The admin console: the dashboard over a date range (/admin/dashboard/), the index's side
panel fed by the audit trail, and django-oauth-toolkit's internals out of the way."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from bs4 import BeautifulSoup
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Agent, Conversation, ModelRoute, Run, RunStep
from audit.models import AuditEvent
from audit.services import Target, audit_record
from governance.models import ApprovalRequest
from governance.policy import Verdict, VerdictAction
from tools.models import Tool

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/dashboard/"
NONE = "\N{EN DASH}"  # no figure: nothing was decided


@pytest.fixture
def agent():
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    return Agent.objects.create(name="Help desk", slug=f"h-{uuid.uuid4().hex[:6]}", route=route)


def _person(*teams: Group):
    user = get_user_model().objects.create_user(f"p-{uuid.uuid4().hex[:6]}")
    user.groups.add(*teams)
    return user


def _run(agent, actor, *, days_ago: int = 0, **fields) -> Run:
    conversation = Conversation.objects.create(owner=actor, agent=agent)
    run = Run.objects.create(
        agent=agent, conversation=conversation, actor=actor, input="q", **fields
    )
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return run


def _step(run, index: int, kind: str, *, status: str = "ok", **output) -> RunStep:
    now = timezone.now()
    return RunStep.objects.create(
        run=run,
        index=index,
        kind=kind,
        output=output,
        status=status,
        started_at=now,
        finished_at=now,
        deployment=output.get("deployment", ""),
    )


def _approval(run, requester, *, waited: timedelta | None, status: str = "approved", by=None):
    """A request asked `waited` before its decision (decided now), or still pending (None)."""
    now = timezone.now()
    request = ApprovalRequest.objects.create(
        key=f"run:{run.pk}:{uuid.uuid4().hex[:6]}",
        run=run,
        agent=run.agent,
        tool=Tool.objects.get(name="create_ticket"),
        tool_name="create_ticket",
        tool_version="1",
        requested_by=requester,
        arguments={},
        arguments_hash="x",
        expires_at=now + timedelta(days=1),
        status="pending" if waited is None else status,
        decided_by=None if waited is None else by,
        decided_at=None if waited is None else now,
    )
    created = now - (waited or timedelta(minutes=5))
    ApprovalRequest.objects.filter(pk=request.pk).update(created_at=created)
    return request


def _found(run, action: str, data: dict) -> None:
    """An audit event as the run's services record it."""
    with transaction.atomic():
        audit_record(
            actor=None,
            action=action,
            target=Target("agents.run", str(run.pk), f"run {run.pk}"),
            run=run.pk,
            data=data,
        )


def _table(page: str, table_id: str) -> list[list[str]]:
    table = BeautifulSoup(page, "html.parser").find(id=table_id)
    assert table is not None, table_id
    return [
        [cell.get_text(" ", strip=True) for cell in row.find_all(["th", "td"])]
        for row in table.find_all("tr")
    ]


def _figure(page: str, name: str) -> str:
    found = BeautifulSoup(page, "html.parser").select_one(f'[data-figure="{name}"]')
    assert found is not None, name
    return found.get_text(strip=True)


def test_the_dashboard_shows_spend_per_team_and_person_with_its_tables(client, people, agent):
    north, south = Group.objects.create(name="North"), Group.objects.create(name="South")
    ann, bob = _person(north), _person(north, south)
    _run(agent, ann, cost=Decimal("1.25"), prompt_tokens=100, completion_tokens=10)
    _run(agent, bob, days_ago=2, cost=Decimal("0.50"), prompt_tokens=40)
    _run(agent, bob, days_ago=40, cost=Decimal("9"))  # before the range
    client.force_login(people.admin)

    page = client.get(DASHBOARD, {"days": 7}).content.decode()

    assert _figure(page, "runs") == "2"
    assert _figure(page, "cost") == "$1.75"
    assert _figure(page, "tokens") == "150"
    # bob's run counts for both his teams; the role groups are not teams.
    assert _table(page, "teams-totals")[1:] == [
        ["North", "2", "150", "$1.7500"],
        ["South", "1", "40", "$0.5000"],
    ]
    assert _table(page, "users-totals")[1:] == [
        [ann.username, "1", "110", "$1.2500"],
        [bob.username, "1", "40", "$0.5000"],
    ]
    matrix = _table(page, "users-matrix")
    assert matrix[0] == ["Day", ann.username, bob.username, "Total"]
    assert len(matrix) == 1 + 7  # one row a day
    today = timezone.localdate()
    assert matrix[-1] == [f"{today:%b %d}", "$1.2500", "$0.0000", "$1.2500"]
    assert matrix[-3][1:] == ["$0.0000", "$0.5000", "$0.5000"]
    assert page.count('<svg class="chart') == 5  # teams, people, approvals, guardrails, faults
    assert 'aria-label="Spend per team per day"' in page


def test_the_dashboard_measures_approval_waits_from_request_to_decision(client, people, agent):
    run = _run(agent, people.member)
    for hours in (1, 3):
        _approval(run, people.member, waited=timedelta(hours=hours), by=people.reviewer)
    _approval(run, people.member, waited=timedelta(hours=50), status="expired")  # no one decided
    _approval(run, people.member, waited=None)
    client.force_login(people.admin)

    page = client.get(DASHBOARD).content.decode()

    assert _figure(page, "approval-median") == "2.0 h"
    assert _figure(page, "approval-p90") == "2.8 h"  # interpolated between 1 h and 3 h
    assert _figure(page, "pending") == "1"
    rows = _table(page, "approvals-table")
    assert rows[0] == ["Day", "Decided", "Median wait", "90th percentile", "Pending at its end"]
    assert rows[-1][1:] == ["2", "2.0 h", "2.8 h", "1"]
    assert rows[-2][1:3] == ["0", NONE]
    assert rows[-5][1:] == ["0", NONE, NONE, "0"]  # before even the expired one was asked


def test_the_dashboard_counts_guardrail_findings_fallbacks_and_errors(client, people, agent):
    run = _run(agent, people.member, state="failed", error="model provider refused: quota")
    _run(agent, people.member, state="failed", error="model provider refused: quota")
    flagged = Verdict("injection", VerdictAction.FLAG, "ignore previous").as_dict()
    blocked = Verdict("injection", VerdictAction.BLOCK, "passage: quarantined").as_dict()
    _found(run, "policy.decided", {"on": "run.start", "allowed": True, "verdicts": [flagged]})
    _found(run, "policy.decided", {"on": "run.start", "allowed": True})  # nothing found
    _found(run, "guardrail.found", blocked)  # a passage withheld
    _found(run, "guardrail.found", {"tool": "search", **blocked})  # a tool output withheld
    _found(run, "guardrail.found", flagged)  # a security document let through
    exfiltration = {"guardrail": "exfiltration", "host": "evil.example", "reason": "a secret"}
    _found(run, "guardrail.found", {"on": "answer", "findings": [exfiltration]})
    _found(run, "run.step.model", {"deployment": "eu-1", "redacted": ["EMAIL"]})
    _found(run, "run.step.model", {"deployment": "eu-1"})
    _found(run, "route.fallback", {"skipped": "primary-0", "served_by": "eu-1"})
    _found(run, "route.fallback", {"skipped": "us-2", "served_by": "eu-1"})
    _step(run, 0, "model", deployment="eu-1", fallbacks=["primary-0"], cached=False)
    _step(run, 1, "model", deployment="primary-0", fallbacks=[], cached=True)
    _step(run, 2, "tool", status="error", result={"error": "timeout"})
    _step(run, 3, "tool", result={"ok": True})
    client.force_login(people.admin)

    page = client.get(DASHBOARD, {"days": 7}).content.decode()

    guards = _table(page, "guardrails-matrix")
    assert guards[0][1:] == [
        "Injection in a message",
        "Source withheld from the model",
        "Security document let through",
        "Personal data redacted",
        "Link carrying data in an answer",
        "Total",
    ]
    assert guards[-1][1:] == ["1", "2", "1", "1", "1", "6"]
    faults = _table(page, "faults-matrix")
    assert faults[0][1:] == ["Served after a fallback", "Tool call failed", "Run failed", "Total"]
    assert faults[-1][1:] == ["1", "1", "2", "4"]
    assert _table(page, "deployments-table")[1:] == [
        ["eu-1", "1", "1", "0", "0"],
        ["primary-0", "1", "0", "1", "1"],
        ["us-2", "0", "0", "0", "1"],  # only ever passed over
    ]
    assert _table(page, "errors-table")[1:] == [["model provider refused: quota", "2"]]


def test_the_range_takes_dates_and_groups_long_ranges_by_week(client, people, agent):
    _run(agent, people.member, days_ago=10, cost=Decimal("2"))
    _run(agent, people.member, days_ago=1, cost=Decimal("1"))
    since = timezone.localdate() - timedelta(days=12)
    until = timezone.localdate() - timedelta(days=5)
    client.force_login(people.admin)

    page = client.get(DASHBOARD, {"since": since, "until": until}).content.decode()
    long = client.get(DASHBOARD, {"days": 90}).content.decode()

    assert _figure(page, "cost") == "$2.00"  # the run of yesterday is after the range
    assert len(_table(page, "teams-matrix")) == 1 + 8
    assert f"{since:%b} {since.day}, {since:%Y}" in page
    weeks = _table(long, "teams-matrix")
    assert weeks[0][0] == "Week"
    assert 13 <= len(weeks) - 1 <= 14
    assert _figure(long, "cost") == "$3.00"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "2026-13-45"}, "From: Enter a valid date."),
        ({"until": "yesterday"}, "To: Enter a valid date."),
        ({"since": "2026-03-10", "until": "2026-03-01"}, "The range starts (2026-03-10) after"),
        ({"since": "2020-01-01", "until": "2026-01-01"}, "A range is at most 366 days long."),
        ({"since": "2999-01-01", "until": "2999-01-02"}, "The range starts in the future"),
        ({"days": "5"}, "Last: Select a valid choice."),
    ],
)
def test_bad_dates_get_a_readable_message_and_the_default_range(client, people, params, message):
    client.force_login(people.admin)

    response = client.get(DASHBOARD, params)

    assert response.status_code == 200
    page = response.content.decode()
    alert = " ".join(
        tag.get_text(" ", strip=True)
        for tag in BeautifulSoup(page, "html.parser").select('[role="alert"]')
    )
    assert message in alert
    assert "Showing the last 30 days instead." in alert
    assert len(_table(page, "approvals-table")) == 1 + 30


def test_the_dashboard_s_queries_do_not_grow_with_runs_people_or_events(
    client, people, agent, django_assert_max_num_queries
):
    def grow(n: int) -> None:
        team = Group.objects.create(name=f"Team {uuid.uuid4().hex[:4]}")
        for i in range(n):
            person = _person(team)
            run = _run(agent, person, days_ago=i % 20, cost=Decimal("0.1"), state="failed")
            _step(run, 0, "model", deployment=f"d{i % 3}", fallbacks=["x"] if i % 2 else [])
            _approval(run, person, waited=timedelta(hours=i + 1), by=people.reviewer)
            _found(run, "run.step.model", {"redacted": ["EMAIL"]})

    client.force_login(people.admin)
    grow(3)
    with CaptureQueriesContext(connection) as few:
        assert client.get(DASHBOARD).status_code == 200
    grow(30)
    with CaptureQueriesContext(connection) as many:
        page = client.get(DASHBOARD).content.decode()

    assert len(many) == len(few)
    with django_assert_max_num_queries(15):  # the session, the user, then 13 aggregates
        client.get(DASHBOARD, {"days": 90})
    assert _figure(page, "runs") == "33"


def test_the_dashboard_is_for_those_who_may_view_runs(client, people):
    staff = people.outsider
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    client.force_login(staff)

    assert client.get(DASHBOARD).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_run"))
    assert client.get(DASHBOARD).status_code == 200
    client.force_login(people.member)  # not staff: the admin's sign-in page
    assert client.get(DASHBOARD).status_code == 302


# The index: OAuth's internals set aside, the audit trail in the side panel.


def _index_models(page: str) -> tuple[list[str], list[str], list[str]]:
    """(models in the main app list, in the side navigation, in the OAuth internals)."""
    soup = BeautifulSoup(page, "html.parser")
    main = soup.find(id="content-main")
    assert main is not None
    internals = soup.find("details", class_="oauth-internals")
    listed = [a.get_text(strip=True) for a in main.select("table th[scope=row] a")]
    nav = soup.find(id="nav-sidebar")
    sidebar = [a.get_text(strip=True) for a in nav.select("th[scope=row] a")] if nav else []
    inner = [a.get_text(strip=True) for a in internals.select("a")] if internals else []
    return listed, sidebar, inner


def test_the_index_sets_the_oauth_internals_aside(client, people):
    client.force_login(people.admin)

    listed, _, inner = _index_models(client.get("/admin/").content.decode())
    _, sidebar, _ = _index_models(client.get("/admin/agents/agent/").content.decode())
    app_index = client.get("/admin/oauth2_provider/").content.decode()

    assert {"Applications", "Access tokens"} <= set(listed)
    assert {"Applications", "Access tokens"} <= set(sidebar)
    internals = {"Grants", "Id tokens", "Refresh tokens"}  # DOT's own names
    assert not internals & set(listed)
    assert not internals & set(sidebar)
    assert set(inner) == internals
    assert internals <= set(_index_models(app_index)[0])  # still reachable, and from there
    for path in ("grant", "idtoken", "refreshtoken"):
        assert client.get(f"/admin/oauth2_provider/{path}/").status_code == 200


def _tokens(people):
    from oauth2_provider.models import AccessToken, Application, RefreshToken

    application = Application.objects.create(
        name="CRM",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        user=people.integration,
        redirect_uris="https://crm.example/cb",
    )
    pairs = []
    for _ in range(2):
        access = AccessToken.objects.create(
            application=application,
            user=people.member,
            token=f"access-{uuid.uuid4().hex}",
            scope="agents:run",
            expires=timezone.now() + timedelta(hours=1),
        )
        refresh = RefreshToken.objects.create(
            application=application,
            user=people.member,
            token=f"refresh-{uuid.uuid4().hex}",
            access_token=access,
        )
        pairs.append((access, refresh))
    return application, pairs


def test_an_admin_revokes_an_oauth_token_with_its_refresh_token_audited(client, people):
    from oauth2_provider.models import AccessToken, RefreshToken

    _, [(access, refresh), (other, _)] = _tokens(people)
    client.force_login(people.admin)

    response = client.post(
        "/admin/oauth2_provider/accesstoken/",
        {"action": "revoke_tokens", "_selected_action": [access.pk]},
        follow=True,
    )

    assert "Revoked 1 access token." in response.content.decode()
    assert not AccessToken.objects.filter(pk=access.pk).exists()
    assert RefreshToken.objects.get(pk=refresh.pk).revoked is not None  # no new token from it
    assert AccessToken.objects.filter(pk=other.pk).exists()
    event = AuditEvent.objects.get(action="token.revoked")
    assert (event.actor_id, event.target_type, event.target_id) == (
        str(people.admin.pk),
        "oauth2_provider.accesstoken",
        str(access.pk),
    )


def test_a_refresh_token_is_revoked_from_the_oauth_internals_audited(client, people):
    from oauth2_provider.models import AccessToken, RefreshToken

    _, [(access, refresh), (other, _)] = _tokens(people)
    client.force_login(people.admin)

    client.post(
        "/admin/oauth2_provider/refreshtoken/",
        {"action": "revoke_tokens", "_selected_action": [refresh.pk]},
    )

    assert RefreshToken.objects.get(pk=refresh.pk).revoked is not None
    assert not AccessToken.objects.filter(pk=access.pk).exists()  # its access token with it
    assert AccessToken.objects.filter(pk=other.pk).exists()
    event = AuditEvent.objects.get(action="token.revoked")
    assert (event.target_type, event.target_id) == ("oauth2_provider.refreshtoken", str(refresh.pk))


def test_an_admin_revokes_every_token_of_an_application(client, people):
    from oauth2_provider.models import AccessToken, Application, RefreshToken

    application, _ = _tokens(people)
    client.force_login(people.admin)

    client.post(
        "/admin/oauth2_provider/application/",
        {"action": "revoke_tokens", "_selected_action": [application.pk]},
    )

    assert not AccessToken.objects.filter(application=application).exists()
    assert not RefreshToken.objects.filter(application=application, revoked__isnull=True).exists()
    assert Application.objects.filter(pk=application.pk).exists()
    event = AuditEvent.objects.get(action="application.tokens_revoked")
    assert event.target_id == str(application.pk)
    assert '"access_tokens":2' in event.data
    assert '"refresh_tokens":2' in event.data


def test_staff_who_may_only_view_tokens_cannot_revoke_them(client, people):
    from oauth2_provider.models import AccessToken

    _, [(access, _), _] = _tokens(people)
    viewer = people.outsider
    viewer.is_staff = True
    viewer.save(update_fields=["is_staff"])
    viewer.user_permissions.add(Permission.objects.get(codename="view_accesstoken"))
    client.force_login(viewer)

    listing = client.get("/admin/oauth2_provider/accesstoken/")
    client.post(
        "/admin/oauth2_provider/accesstoken/",
        {"action": "revoke_tokens", "_selected_action": [access.pk]},
    )

    assert listing.status_code == 200
    assert "revoke_tokens" not in listing.content.decode()
    assert AccessToken.objects.filter(pk=access.pk).exists()
    assert not AuditEvent.objects.filter(action="token.revoked").exists()


def test_the_index_side_panel_shows_recent_audit_events_linking_to_the_trail(
    client, people, agent, django_assert_max_num_queries
):
    run = _run(agent, people.member)
    _found(run, "run.succeeded", {})  # a run's routine record: left to the run's own page
    with transaction.atomic():
        audit_record(
            actor=people.reviewer, action="tool.enabled", target=Target("tools.tool", "7", "search")
        )
        audit_record(
            actor=people.admin, action="secret.set", target=Target("agents.secret", "1", "crm-key")
        )
    client.force_login(people.admin)

    with django_assert_max_num_queries(12):  # one of them for the panel, however long the trail
        page = client.get("/admin/").content.decode()

    panel = BeautifulSoup(page, "html.parser").find(id="recent-audit-module")
    assert panel.h2.get_text(strip=True) == "Recent audit events"
    items = [li.get_text(" ", strip=True) for li in panel.select("li")]
    assert items[0].startswith(f"secret.set crm-key · {people.admin.username}")
    assert items[1].startswith(f"tool.enabled search · {people.reviewer.username}")
    assert not any("run.succeeded" in item for item in items)
    newest = AuditEvent.objects.get(action="secret.set")
    assert panel.find("a", string="secret.set")["href"] == (
        f"/admin/audit/auditevent/{newest.sequence}/change/"
    )
    assert panel.find("a", string="The whole audit trail")["href"] == "/admin/audit/auditevent/"
    assert "Recent actions" not in page  # Django's own log (LogEntry): the trail replaces it


def test_staff_who_may_not_read_the_trail_see_only_their_own_actions(client, people):
    staff = people.outsider
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    with transaction.atomic():
        audit_record(actor=staff, action="auth.signed_in", target=Target.of(staff))
        audit_record(
            actor=people.admin, action="secret.set", target=Target("agents.secret", "1", "k")
        )
    client.force_login(staff)

    page = client.get("/admin/").content.decode()

    panel = BeautifulSoup(page, "html.parser").find(id="recent-audit-module")
    assert panel.h2.get_text(strip=True) == "Your recent actions"
    assert [li.get_text(" ", strip=True).split(" ")[0] for li in panel.select("li")] == [
        "auth.signed_in"
    ]
    assert panel.find("a") is None  # the trail is not theirs to open
