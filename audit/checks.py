"""`check --deploy --database default`: can the application's own database role switch the
audit trail's append-only triggers off? A superuser or the tables' owner can (ALTER TABLE ...
DISABLE TRIGGER, session_replication_role), so production should run Warden as a role that is
neither, with only SELECT and INSERT on the audit tables (README, "Database roles")."""

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Tags, Warning, register
from django.db import DatabaseError, connections

AUDIT_TABLES = ("audit_auditevent", "audit_auditanchor", "audit_auditstream")


@register(Tags.database, deploy=True)
def audit_role_cannot_disable_triggers(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    for alias in databases or ():
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                row = cursor.fetchone()
                superuser = bool(row and row[0])
                cursor.execute(
                    "SELECT count(*) FROM pg_tables WHERE tablename = ANY(%s) "
                    "AND pg_has_role(current_user, tableowner, 'USAGE')",
                    [list(AUDIT_TABLES)],
                )
                owns = cursor.fetchone()[0] > 0
        except DatabaseError:
            continue  # an unreachable database is reported by the database checks themselves
        if superuser or owns:
            problems.append(
                Warning(
                    "The database role Warden runs as "
                    + ("is a superuser" if superuser else "owns the audit tables")
                    + ", so it could switch the audit trail's append-only triggers off.",
                    hint="Run Warden as a role that is neither, with only SELECT and INSERT on "
                    "the audit tables; migrate as the owner (README, 'Database roles').",
                    id="audit.W001",
                )
            )
    return problems
