"""`audit_append` locks an existing stream head with SELECT … FOR UPDATE instead of an upsert
that rewrote it: the head row was written twice per event (the upsert's no-op update, then the
advance), each a new row version through the forward-only trigger. A new stream is still created
by the upsert, which also settles two writers starting the same stream at once. The chain, the
lock a writer holds and the trigger's rule are unchanged (0004 has the rest of the function)."""

import importlib

from django.db import migrations

# 0004's function, rewritten here in its one changed part (a migration file never changes).
APPEND_0004: str = importlib.import_module("audit.migrations.0004_append_function").APPEND

LOCK_0004 = """
    INSERT INTO audit_auditstream AS s (key, last_seq, last_hash, anchored)
        VALUES (p_stream, 0, repeat('0', 64), true)
        ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
        RETURNING s.last_seq, s.last_hash INTO head;
"""

LOCK = """
    SELECT s.last_seq, s.last_hash INTO head FROM audit_auditstream s
        WHERE s.key = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_auditstream AS s (key, last_seq, last_hash, anchored)
            VALUES (p_stream, 0, repeat('0', 64), true)
            ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
            RETURNING s.last_seq, s.last_hash INTO head;
    END IF;
"""


def _function(lock: str) -> str:
    body = APPEND_0004.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    if LOCK_0004 not in body:
        raise RuntimeError("0004's function is not the one this migration rewrites")
    return body.replace(LOCK_0004, lock)


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_append_function")]
    operations = [migrations.RunSQL(_function(LOCK), reverse_sql=_function(LOCK_0004))]
