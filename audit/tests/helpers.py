from contextlib import contextmanager

from django.db import connection

from audit.models import AuditEvent
from audit.services import Target, audit_record


def record(n: int, *, stream: str = "", action: str = "test.happened", **extra) -> list:
    """Record `n` events (in the caller's transaction) on one stream, or on their targets; the
    rows, read back."""
    sequences = [
        audit_record(
            actor=None,
            action=action,
            target=Target("test.thing", str(i), f"thing {i}"),
            data={"i": i, **extra},
            stream=stream or None,
        )
        for i in range(n)
    ]
    return list(AuditEvent.objects.filter(sequence__in=sequences).order_by("sequence"))


@contextmanager
def tampering():
    """As the database superuser, with the append-only triggers off (inside the test's
    transaction, so they come back when it rolls back)."""
    tables = ("audit_auditevent", "audit_auditanchor", "audit_auditstream")
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield cursor
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
