import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditAnchor, AuditEvent, AuditStream
from audit.services import audit_anchor
from audit.tests.helpers import record

pytestmark = pytest.mark.django_db


@pytest.fixture
def event():
    with transaction.atomic():
        (event,) = record(1)
    return AuditEvent.objects.get(sequence=event.sequence)


def refused(sql: str, params=()) -> str:
    with (
        pytest.raises(DatabaseError) as raised,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, params)
    return str(raised.value)


def test_update_is_refused_by_the_database(event):
    message = refused(
        "UPDATE audit_auditevent SET action = 'test.forged' WHERE sequence = %s", [event.sequence]
    )

    assert "append-only: UPDATE on audit_auditevent is not allowed" in message
    assert AuditEvent.objects.get(sequence=event.sequence).action == "test.happened"


def test_orm_update_and_delete_are_refused(event):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(sequence=event.sequence).update(actor_label="mallory")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(sequence=event.sequence).delete()

    assert AuditEvent.objects.get(sequence=event.sequence).actor_label == "warden"


def test_delete_and_truncate_are_refused_by_the_database(event):
    assert "DELETE on audit_auditevent" in refused("DELETE FROM audit_auditevent")
    assert "TRUNCATE on audit_auditevent" in refused("TRUNCATE audit_auditevent")

    assert AuditEvent.objects.filter(sequence=event.sequence).exists()


def test_anchors_are_append_only_too(event):
    anchor = audit_anchor()

    assert "UPDATE on audit_auditanchor" in refused("UPDATE audit_auditanchor SET heads = '{}'")
    assert "DELETE on audit_auditanchor" in refused("DELETE FROM audit_auditanchor")
    assert AuditAnchor.objects.get(sequence=anchor.sequence).heads == anchor.heads


def test_anchors_refuse_truncate(event):
    audit_anchor()

    assert "TRUNCATE on audit_auditanchor" in refused("TRUNCATE audit_auditanchor")


def test_stream_heads_only_move_forward(event):
    key = event.stream

    assert "never removed: DELETE" in refused("DELETE FROM audit_auditstream WHERE key = %s", [key])
    assert "never removed: TRUNCATE" in refused("TRUNCATE audit_auditstream")
    rewind = "UPDATE audit_auditstream SET last_seq = 0, last_hash = %s WHERE key = %s"
    assert "may only advance by one event" in refused(rewind, ["0" * 64, key])
    jump = "UPDATE audit_auditstream SET last_seq = last_seq + 2 WHERE key = %s"
    assert "may only advance by one event" in refused(jump, [key])
    assert AuditStream.objects.get(key=key).last_seq == 1
