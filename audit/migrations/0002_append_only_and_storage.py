"""Append-only, enforced by PostgreSQL: UPDATE, DELETE and TRUNCATE on audit events and anchors
raise, whoever issues them (the application's own connection included). Only a superuser who
disables the triggers can tamper, and verification then finds it.
"""

from django.db import migrations

FORBID = """
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""
TABLES = ("audit_auditevent", "audit_auditanchor")


def _triggers(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        migrations.RunSQL(
            FORBID + "".join(_triggers(table) for table in TABLES),
            reverse_sql="".join(
                f"DROP TRIGGER {t}_no_update_delete ON {t}; DROP TRIGGER {t}_no_truncate ON {t};"
                for t in TABLES
            )
            + "DROP FUNCTION audit_append_only();",
        ),
        # Stream heads are updated on every event. Packed densely, the heads of unrelated
        # streams share a heap page and their writers queue for its buffer lock (measured with
        # bench/audit_throughput.py: 8 writers fell to half the rate of 2). A few heads per
        # page, with room for HOT updates, keeps unrelated writers apart.
        migrations.RunSQL(
            "ALTER TABLE audit_auditstream SET (fillfactor = 10)",
            reverse_sql="ALTER TABLE audit_auditstream RESET (fillfactor)",
        ),
    ]
