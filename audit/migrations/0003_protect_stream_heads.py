"""Stream heads only move forward: one event at a time, never back, never deleted.

Without this, removing a stream's head row would let a stream start over (and block every later
write to it), and rewinding a head would hide the removal of its last events from the check of
heads against events.
"""

from django.db import migrations

GUARD = """
CREATE FUNCTION audit_stream_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit stream heads are never removed: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.key <> OLD.key
       OR NOT (NEW.last_seq = OLD.last_seq AND NEW.last_hash = OLD.last_hash
               OR NEW.last_seq = OLD.last_seq + 1) THEN
        RAISE EXCEPTION 'audit stream % may only advance by one event', OLD.key
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_auditstream_forward_only BEFORE UPDATE OR DELETE ON audit_auditstream
    FOR EACH ROW EXECUTE FUNCTION audit_stream_forward_only();
CREATE TRIGGER audit_auditstream_no_truncate BEFORE TRUNCATE ON audit_auditstream
    FOR EACH STATEMENT EXECUTE FUNCTION audit_stream_forward_only();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_and_storage")]

    operations = [
        migrations.RunSQL(
            GUARD,
            reverse_sql=(
                "DROP TRIGGER audit_auditstream_forward_only ON audit_auditstream;"
                "DROP TRIGGER audit_auditstream_no_truncate ON audit_auditstream;"
                "DROP FUNCTION audit_stream_forward_only();"
            ),
        ),
    ]
