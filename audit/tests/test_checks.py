import pytest
from django.db import connection

from audit.checks import audit_role_cannot_disable_triggers

pytestmark = pytest.mark.django_db


def test_superuser_role_is_warned_about():
    # The embedded server's (and the test suite's) role is the PostgreSQL superuser.
    problems = audit_role_cannot_disable_triggers(databases=["default"])

    assert [p.id for p in problems] == ["audit.W001"]
    assert "is a superuser" in problems[0].msg


# The README's "Database roles" grants, minus LOGIN/CONNECT (the test switches role instead).
README_GRANTS = """
GRANT USAGE ON SCHEMA public TO warden_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO warden_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO warden_app;
REVOKE UPDATE, DELETE ON audit_auditevent, audit_auditanchor FROM warden_app;
REVOKE DELETE ON audit_auditstream FROM warden_app;
"""


def test_the_documented_application_role_works_and_cannot_tamper():
    from django.contrib.auth.models import Group
    from django.db import DatabaseError, transaction

    from audit.models import AuditEvent
    from audit.services import audit_anchor, audit_record

    with connection.cursor() as cursor:
        cursor.execute("CREATE ROLE warden_app NOLOGIN")
        cursor.execute(README_GRANTS)
        cursor.execute("SET ROLE warden_app")
    try:
        problems = audit_role_cannot_disable_triggers(databases=["default"])
        with transaction.atomic():  # what Warden does: act, record, anchor
            group = Group.objects.create(name="Reviewers")
            sequence = audit_record(actor=None, action="group.created", target=group)
        assert audit_anchor() is not None
        for sql in (
            "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
            "SET session_replication_role = replica",
            "DELETE FROM audit_auditevent",
            "UPDATE audit_auditevent SET action = 'x.y'",
        ):
            with pytest.raises(DatabaseError), transaction.atomic():
                connection.cursor().execute(sql)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")

    assert problems == []
    assert AuditEvent.objects.get(sequence=sequence).action == "group.created"


def test_only_runs_when_asked_for_a_database():
    assert audit_role_cannot_disable_triggers(databases=None) == []
