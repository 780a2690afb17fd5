"""The console's drift pages: the open alerts and each agent's latest checks, an agent's
signals day by day against their reference, and acknowledging an alert (a permission of its
own; a denial writes nothing)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from bs4 import BeautifulSoup
from django.contrib.auth.models import Permission
from django.utils import timezone

from agents.drift import drift_check
from agents.models import DriftCheck, DriftReference
from agents.tests.test_drift import _day
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

DRIFT = "/admin/dashboard/drift/"


@pytest.fixture
def drifted(people):
    """An agent steady for 14 days whose yesterday drifted (its refusals and tool mix), checked."""
    from agents.tests.test_drift import _agent

    agent = _agent("Drifting")
    yesterday = timezone.localdate() - timedelta(days=1)
    for back in range(2, 16):
        _day(agent, people.member, yesterday - timedelta(days=back - 1))
    refunds = (("issue_refund", 28), ("lookup_order", 8), ("create_ticket", 4))
    _day(agent, people.member, yesterday, rejected=12, tools=refunds)
    drift_check(day=yesterday)
    return agent


def _rows(page: str, table_id: str) -> list[list[str]]:
    table = BeautifulSoup(page, "html.parser").find(id=table_id)
    assert table is not None, table_id
    return [
        [cell.get_text(" ", strip=True) for cell in row.find_all(["th", "td"])]
        for row in table.find_all("tr")
    ]


def _staff(people, *permissions: str):
    user = people.reviewer
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_the_drift_page_lists_the_open_alerts_and_each_agents_latest_checks(
    client, people, drifted
):
    client.force_login(people.admin)

    page = client.get(DRIFT).content.decode()

    yesterday = timezone.localdate() - timedelta(days=1)
    day = f"{yesterday:%b} {yesterday.day}"
    alerts = _rows(page, "drift-alerts")
    assert [row[:7] for row in alerts[1:]] == [
        ["Drifting", day, "Refusal rate", "rate_difference", "0.2000", "0.1", "40"],
        ["Drifting", day, "Tool-call mix", "js_distance", "0.7036", "0.3", "40"],
    ]
    latest = _rows(page, "drift-latest")
    assert latest[1][0] == "Drifting"
    assert latest[1][1] == "\N{EN DASH}"  # 28 answers had a confidence: too few to compare
    assert latest[1][2].startswith("0.0000 (0.25) ok")
    assert latest[1][3].startswith("0.2000 (0.1) alert")
    # The index's card counts them.
    index = BeautifulSoup(client.get("/admin/").content.decode(), "html.parser")
    assert index.select_one('[data-figure="drift-alerts"]').get_text(strip=True) == "2"


def test_an_agents_page_charts_each_signal_against_its_reference(client, people, drifted):
    client.force_login(people.admin)

    page = client.get(f"{DRIFT}{drifted.pk}/").content.decode()

    refusals = _rows(page, "refusals-table")
    assert refusals[-1][1:] == ["30.0% of 40", "10.0% of 560", "rate_difference 0.2000 (0.1) alert"]
    # Fewer than 14 days before it: the reference is short, but over the minimum after 3 days.
    assert refusals[-14][1:] == [
        "10.0% of 40",
        "10.0% of 40",
        "too few samples (40 on the day, 40 in the reference; need 30 and 100)",
    ]
    soup = BeautifulSoup(page, "html.parser")
    assert soup.select_one("#refusals-title ~ figure svg")["aria-label"] == (
        "Refusal rate: the day's share of runs refused and its reference's"
    )
    assert soup.select_one("#tool_mix-title ~ figure svg")["aria-label"] == (
        "Tool calls per day, by tool"
    )


def test_acknowledging_an_alert_closes_it_and_is_audited(client, people, drifted):
    alert = DriftCheck.objects.get(agent=drifted, signal="tool_mix")
    user = _staff(people, "view_run", "acknowledge_driftcheck")
    client.force_login(user)

    response = client.post(f"{DRIFT}alerts/{alert.pk}/acknowledge/", {"next": DRIFT})

    assert response.status_code == 302
    assert response["Location"] == DRIFT
    alert.refresh_from_db()
    assert (alert.acknowledged_by, alert.acknowledged_at is not None) == (user, True)
    event = AuditEvent.objects.get(action="agent.drift_acknowledged")
    assert (event.actor_id, event.target_id) == (str(user.pk), str(drifted.pk))
    page = client.get(DRIFT).content.decode()
    assert [row[2] for row in _rows(page, "drift-alerts")[1:]] == ["Refusal rate"]


def test_acknowledging_needs_its_permission_and_a_denial_writes_nothing(client, people, drifted):
    alert = DriftCheck.objects.get(agent=drifted, signal="tool_mix")
    viewer = _staff(people, "view_run")
    client.force_login(viewer)

    page = client.get(DRIFT).content.decode()
    response = client.post(f"{DRIFT}alerts/{alert.pk}/acknowledge/")

    assert (
        "Acknowledge" not in BeautifulSoup(page, "html.parser").find(id="drift-alerts").get_text()
    )
    assert response.status_code == 403
    alert.refresh_from_db()
    assert (alert.acknowledged_by, alert.acknowledged_at) == (None, None)
    assert not AuditEvent.objects.filter(action="agent.drift_acknowledged").exists()


def test_the_drift_pages_need_the_view_run_permission(client, people, drifted):
    client.force_login(_staff(people))

    assert client.get(DRIFT).status_code == 403
    assert client.get(f"{DRIFT}{drifted.pk}/").status_code == 403


def test_an_admin_pins_the_reference_window_on_the_agents_page(client, people, drifted):
    client.force_login(people.admin)
    url = f"{DRIFT}{drifted.pk}/reference/"

    response = client.post(url, {"since": "2026-10-01", "until": "2026-10-14", "reason": "v2"})

    assert response.status_code == 302
    pinned = DriftReference.objects.get(agent=drifted)
    assert (str(pinned.since), str(pinned.until), pinned.reason, pinned.pinned_by) == (
        "2026-10-01",
        "2026-10-14",
        "v2",
        people.admin,
    )
    page = BeautifulSoup(client.get(f"{DRIFT}{drifted.pk}/").content.decode(), "html.parser")
    assert (
        page.find(id="pinned")
        .get_text(" ", strip=True)
        .startswith(
            "Days after Oct 14, 2026 are compared with "
            "Oct 1, 2026 \N{EN DASH} Oct 14, 2026, pinned by"
        )
    )

    client.post(url, {"unpin": "1"})

    assert not DriftReference.objects.exists()
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="agent.drift_ref")] == [
        "agent.drift_reference_pinned",
        "agent.drift_reference_unpinned",
    ]


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        (
            "2026-10-14",
            "2026-10-01",
            "the window starts (2026-10-14) after it ends (2026-10-01).",
        ),
        (
            "0202-01-01",
            "2026-10-01",
            "a reference window is at most 366 days: 0202-01-01..2026-10-01 is 666477 days.",
        ),
    ],
    ids=["backwards", "more than a year"],
)
def test_a_window_that_makes_no_sense_is_refused_with_a_message_and_nothing_pinned(
    client, people, drifted, since, until, message
):
    client.force_login(people.admin)

    response = client.post(
        f"{DRIFT}{drifted.pk}/reference/", {"since": since, "until": until}, follow=True
    )

    shown = [str(m) for m in response.context["messages"]]
    assert shown == [f"The reference was not pinned: {message}"]
    assert not DriftReference.objects.exists()


def test_pinning_needs_its_permission_and_a_denial_writes_nothing(client, people, drifted):
    client.force_login(_staff(people, "view_run"))

    page = BeautifulSoup(client.get(f"{DRIFT}{drifted.pk}/").content.decode(), "html.parser")
    response = client.post(
        f"{DRIFT}{drifted.pk}/reference/", {"since": "2026-10-01", "until": "2026-10-14"}
    )

    assert page.find("form", attrs={"aria-label": "Pin the reference"}) is None
    assert response.status_code == 403
    assert not DriftReference.objects.exists()
    assert not AuditEvent.objects.filter(action="agent.drift_reference_pinned").exists()
