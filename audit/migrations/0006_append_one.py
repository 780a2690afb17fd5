"""`audit_append_one(stream, fields…, content)`: one event, its fields as plain text parameters.

An event recorded on its own (`audit_record`, most of them) no longer goes through a JSON array
that PostgreSQL parses and reads field by field, nor comes back as a whole row for the writer
to parse: the function returns the appended row, and the writer asks only for its sequence
(README, *Audit trail*: the throughput this bought at 8 writers).

The chain is written in this one function: `audit_append(stream, events)` (0004, a run's
checkpoint and `audit_record_drafts`) now appends each of its events through it. The hash, the
lock a writer holds and the forward-only rule are unchanged; a stream's head row, locked at the
first event of a statement, is locked again at each next (the lock is already held; the cost
is a little WAL and the call, ~20-40 µs of PostgreSQL's CPU for a statement of 2-3 events).
"""

import importlib

from django.db import migrations

_0005 = importlib.import_module("audit.migrations.0005_append_locks_the_head")
APPEND_0005: str = _0005._function(_0005.LOCK)  # what the reverse restores

# Called with named arguments (audit.services: p_ and each field's name). The INSERT's column
# list is the table's: a migration that adds, renames or removes a column of audit_auditevent
# redefines this function (audit/tests/test_append_function.py checks that they agree).
APPEND_ONE = """
CREATE FUNCTION audit_append_one(p_stream text, p_actor_type text, p_actor_id text,
    p_actor_label text, p_action text, p_target_type text, p_target_id text,
    p_target_label text, p_run text, p_conversation text, p_data text, p_content text)
RETURNS audit_auditevent LANGUAGE plpgsql AS $$
DECLARE
    head record;
    appended audit_auditevent;
BEGIN
    -- concat_ws skips a NULL: an event without its digest would be stored unverifiable.
    IF p_content IS NULL OR p_content !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'audit_append_one: the content digest must be 64 lower-case hex digits'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.last_seq, s.last_hash INTO head FROM audit_auditstream s
        WHERE s.key = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_auditstream AS s (key, last_seq, last_hash, anchored)
            VALUES (p_stream, 0, repeat('0', 64), true)
            ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
            RETURNING s.last_seq, s.last_hash INTO head;
    END IF;
    -- Drawn under the head's lock: within a stream, sequence order is chain order and time
    -- never goes back.
    appended.sequence := nextval(pg_get_serial_sequence('audit_auditevent', 'sequence'));
    appended.time := date_trunc('microseconds', clock_timestamp());
    appended.stream_seq := head.last_seq + 1;
    appended.prev_hash := head.last_hash;
    appended.hash := encode(sha256(convert_to(concat_ws('|',
        'v2',
        appended.prev_hash,
        appended.sequence,
        appended.stream_seq,
        to_char(appended.time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        p_content), 'UTF8')), 'hex');
    INSERT INTO audit_auditevent (sequence, time, stream, stream_seq, actor_type, actor_id,
        actor_label, action, target_type, target_id, target_label, run, conversation, data,
        prev_hash, hash)
    VALUES (appended.sequence, appended.time, p_stream, appended.stream_seq, p_actor_type,
        p_actor_id, p_actor_label, p_action, p_target_type, p_target_id, p_target_label, p_run,
        p_conversation, p_data, appended.prev_hash, appended.hash)
    RETURNING * INTO appended;
    UPDATE audit_auditstream SET last_seq = appended.stream_seq, last_hash = appended.hash,
        anchored = false
    WHERE key = p_stream;
    RETURN appended;
END
$$;

CREATE OR REPLACE FUNCTION audit_append(p_stream text, p_events jsonb)
RETURNS SETOF audit_auditevent LANGUAGE plpgsql AS $$
DECLARE
    event jsonb;
BEGIN
    FOR event IN SELECT value FROM jsonb_array_elements(p_events) LOOP
        RETURN NEXT audit_append_one(p_stream, event->>'actor_type', event->>'actor_id',
            event->>'actor_label', event->>'action', event->>'target_type',
            event->>'target_id', event->>'target_label', event->>'run',
            event->>'conversation', event->>'data', event->>'content');
    END LOOP;
END
$$;
"""

DROP_ONE = "DROP FUNCTION audit_append_one(" + ", ".join(["text"] * 12) + ");"


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_append_locks_the_head")]
    operations = [migrations.RunSQL(APPEND_ONE, reverse_sql=APPEND_0005 + DROP_ONE)]
