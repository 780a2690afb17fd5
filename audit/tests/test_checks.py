import pytest
from django.db import connection

from audit.checks import audit_role_cannot_disable_triggers

pytestmark = pytest.mark.django_db


def test_superuser_role_is_warned_about():
    # The embedded server's (and the test suite's) role is the PostgreSQL superuser.
    problems = audit_role_cannot_disable_triggers(databases=["default"])

    assert [p.id for p in problems] == ["audit.W001"]
    assert "is a superuser" in problems[0].msg


def test_a_role_with_only_select_and_insert_passes():
    with connection.cursor() as cursor:
        cursor.execute("CREATE ROLE warden_app NOLOGIN")
        cursor.execute(
            "GRANT SELECT, INSERT ON audit_auditevent, audit_auditanchor TO warden_app;"
            "GRANT SELECT, INSERT, UPDATE ON audit_auditstream TO warden_app"
        )
        cursor.execute("SET ROLE warden_app")
        try:
            problems = audit_role_cannot_disable_triggers(databases=["default"])
            cursor.execute("SAVEPOINT before_disable")
            with pytest.raises(Exception, match="must be owner"):
                cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
            cursor.execute("ROLLBACK TO SAVEPOINT before_disable")
        finally:
            cursor.execute("RESET ROLE")

    assert problems == []


def test_only_runs_when_asked_for_a_database():
    assert audit_role_cannot_disable_triggers(databases=None) == []
