import json

import pytest
from django.contrib.auth.models import Group
from django.db import transaction

from audit.models import AuditEvent
from audit.services import Target, audit_record
from audit.tests.helpers import record, tampering

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/audit/auditevent/"


@pytest.fixture
def governance_admin(django_user_model):
    return django_user_model.objects.create_user("gail", is_staff=True, is_superuser=True)


@pytest.fixture
def events():
    with transaction.atomic():
        return record(3, stream="run:5", action="step.done") + record(2, action="policy.denied")


def test_changelist_lists_events_and_offers_verify_and_export(client, governance_admin, events):
    client.force_login(governance_admin)

    html = client.get(CHANGELIST).content.decode()

    assert "5 audit events" in html
    assert "Verify chain" in html
    assert f"{CHANGELIST}export/" in html
    assert "Add audit event" not in html


def test_admin_cannot_add_change_or_delete(client, governance_admin, events):
    client.force_login(governance_admin)
    event = events[0]

    assert client.get(f"{CHANGELIST}add/").status_code == 403
    response = client.post(f"{CHANGELIST}{event.sequence}/change/", {"action": "test.forged"})
    assert response.status_code == 403
    assert client.post(f"{CHANGELIST}{event.sequence}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.get(sequence=event.sequence).action == "step.done"
    detail = client.get(f"{CHANGELIST}{event.sequence}/change/").content.decode()
    assert "&quot;i&quot;: 0" in detail  # shown read-only, data pretty-printed


def test_verify_button_reports_ok_then_the_break(client, governance_admin, events):
    client.force_login(governance_admin)

    ok = client.post(f"{CHANGELIST}verify/", follow=True).content.decode()
    with tampering() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET actor_label = 'x' WHERE sequence = %s",
            [events[1].sequence],
        )
    broken = client.post(f"{CHANGELIST}verify/", follow=True).content.decode()

    assert "OK: 5 events in 3 streams verified" in ok
    assert f"BROKEN at sequence {events[1].sequence} (stream run:5, event #2)" in broken


@pytest.mark.usefixtures("committing_db")
def test_export_view_streams_the_filtered_events_over_asgi(django_user_model):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    admin = django_user_model.objects.create_user("gail", is_staff=True, is_superuser=True)
    with transaction.atomic():
        record(3, stream="run:5", action="step.done")
        denied = record(2, action="policy.denied")

    async def download():
        client = AsyncClient()  # Django's ASGI handler, as under daphne
        await client.aforce_login(admin)
        response = await client.get(
            f"{CHANGELIST}export/", {"action": "policy.denied", "format": "jsonl"}
        )
        return response, [chunk async for chunk in response.streaming_content]

    response, chunks = async_to_sync(download)()

    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    exported = [json.loads(line)["sequence"] for line in b"".join(chunks).decode().splitlines()]
    assert exported == [e.sequence for e in denied]


def test_export_view_shows_its_form_and_rejects_a_bad_time(client, governance_admin):
    client.force_login(governance_admin)

    form = client.get(f"{CHANGELIST}export/")
    bad = client.get(f"{CHANGELIST}export/", {"since": "not a time", "format": "csv"})

    assert form.status_code == 200
    assert "Download" in form.content.decode()
    assert bad.status_code == 200
    assert "Enter a valid date/time." in bad.content.decode()


def test_member_can_neither_see_nor_export_the_trail(client, django_user_model, events):
    member = django_user_model.objects.create_user("mia")
    client.force_login(member)

    for url in (CHANGELIST, f"{CHANGELIST}export/?format=csv"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
    assert client.post(f"{CHANGELIST}verify/").status_code == 302


def test_staff_without_audit_permission_is_refused_the_custom_views(
    client, django_user_model, events
):
    clerk = django_user_model.objects.create_user("clerk", is_staff=True)
    client.force_login(clerk)

    assert client.get(f"{CHANGELIST}export/?format=jsonl").status_code == 403
    assert client.post(f"{CHANGELIST}verify/").status_code == 403
    assert client.get(CHANGELIST).status_code == 403


def test_configuration_changes_are_recorded_field_by_field(client, governance_admin):
    from auditlog.models import LogEntry

    client.force_login(governance_admin)
    group = Group.objects.create(name="Reviewers EU")
    member = type(governance_admin).objects.create_user("rita")

    member.groups.add(group)  # group membership
    group.name = "Reviewers Europe"
    group.save()

    entries = LogEntry.objects.get_for_object(group)
    assert entries.filter(changes__name=["Reviewers EU", "Reviewers Europe"]).exists()
    membership = (
        LogEntry.objects.get_for_object(member).filter(action=LogEntry.Action.UPDATE).first()
    )
    assert membership.changes["groups"]["objects"] == ["Reviewers EU"]
    history = client.get("/admin/auditlog/logentry/").content.decode()
    assert "Reviewers Europe" in history


def test_anchor_task_anchors_new_heads(events):
    from audit.models import AuditAnchor
    from audit.tasks import audit_anchor_task

    sequence = audit_anchor_task()

    anchor = AuditAnchor.objects.get(sequence=sequence)
    assert sorted(json.loads(anchor.heads)) == ["run:5", "test.thing:0", "test.thing:1"]
    assert audit_anchor_task() is None  # nothing new since
    with transaction.atomic():
        audit_record(actor=None, action="step.done", target=Target("t"), stream="run:5")
    assert json.loads(AuditAnchor.objects.get(sequence=audit_anchor_task()).heads).keys() == {
        "run:5"
    }
