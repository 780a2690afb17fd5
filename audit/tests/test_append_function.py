"""`audit_append_one` (migration 0006) writes the event's row with a column list of its own: it
must stay the model's, and it refuses an event it could not hash before it draws anything."""

import re

import pytest
from django.db import DataError, connection, transaction

from audit.models import AuditEvent
from audit.services import Target, audit_draft

pytestmark = pytest.mark.django_db


def test_the_function_writes_every_column_of_the_events_table():
    with connection.cursor() as cursor:
        cursor.execute("SELECT prosrc FROM pg_proc WHERE oid = 'audit_append_one'::regproc")
        (source,) = cursor.fetchone()
    columns = re.search(r"INSERT INTO audit_auditevent \(([^)]*)\)", source)[1]

    written = [name.strip() for name in columns.split(",")]
    assert written == [field.column for field in AuditEvent._meta.concrete_fields]


@pytest.mark.parametrize("content", [None, "", "not a digest", "A" * 64])
def test_an_event_without_its_digest_is_refused_and_nothing_is_appended(content):
    draft = audit_draft(actor=None, action="test.happened", target=Target("t", "1"))
    fields = {f"p_{name}": value for name, value in draft.fields.items()}
    arguments = ", ".join(f"{name} => %({name})s" for name in fields)

    drawn = _sequence_state()

    with pytest.raises(DataError, match="content digest"), transaction.atomic():
        connection.cursor().execute(
            f"SELECT audit_append_one(p_stream => %(p_stream)s, {arguments}, "
            "p_content => %(p_content)s)",
            {**fields, "p_stream": draft.stream, "p_content": content},
        )

    # A sequence outlives the rollback: the refusal came before a number was drawn.
    assert _sequence_state() == drawn


def _sequence_state() -> tuple:
    with connection.cursor() as cursor:
        cursor.execute("SELECT last_value, is_called FROM audit_auditevent_sequence_seq")
        return cursor.fetchone()
