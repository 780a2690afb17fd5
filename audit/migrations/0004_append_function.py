"""`audit_append(stream, events)`: chain and append events in one statement (chain.py, v2).

The writer sends each event's content and its content digest; under the stream head's lock the
function draws the global sequence number, reads the database clock (never earlier than the
stream's previous event), links the event to the stream's head, hashes the link as chain.py
does, inserts it and advances the head one event at a time (the forward-only trigger's rule).
So an action and its audit event can share one statement: the run checkpoint is one round trip.
"""

from django.db import migrations

APPEND = """
CREATE FUNCTION audit_append(p_stream text, p_events jsonb) RETURNS SETOF audit_auditevent
LANGUAGE plpgsql AS $$
DECLARE
    head record;
    event jsonb;
    appended audit_auditevent;
BEGIN
    INSERT INTO audit_auditstream AS s (key, last_seq, last_hash, anchored)
        VALUES (p_stream, 0, repeat('0', 64), true)
        ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
        RETURNING s.last_seq, s.last_hash INTO head;
    FOR event IN SELECT value FROM jsonb_array_elements(p_events) LOOP
        appended.sequence := nextval(pg_get_serial_sequence('audit_auditevent', 'sequence'));
        appended.time := date_trunc('microseconds', clock_timestamp());
        appended.stream := p_stream;
        appended.stream_seq := head.last_seq + 1;
        appended.actor_type := event->>'actor_type';
        appended.actor_id := event->>'actor_id';
        appended.actor_label := event->>'actor_label';
        appended.action := event->>'action';
        appended.target_type := event->>'target_type';
        appended.target_id := event->>'target_id';
        appended.target_label := event->>'target_label';
        appended.run := event->>'run';
        appended.conversation := event->>'conversation';
        appended.data := event->>'data';
        appended.prev_hash := head.last_hash;
        appended.hash := encode(sha256(convert_to(concat_ws('|',
            'v2',
            appended.prev_hash,
            appended.sequence,
            appended.stream_seq,
            to_char(appended.time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            event->>'content'), 'UTF8')), 'hex');
        INSERT INTO audit_auditevent (sequence, time, stream, stream_seq, actor_type, actor_id,
            actor_label, action, target_type, target_id, target_label, run, conversation, data,
            prev_hash, hash)
        VALUES (appended.sequence, appended.time, appended.stream, appended.stream_seq,
            appended.actor_type, appended.actor_id, appended.actor_label, appended.action,
            appended.target_type, appended.target_id, appended.target_label, appended.run,
            appended.conversation, appended.data, appended.prev_hash, appended.hash);
        UPDATE audit_auditstream SET last_seq = appended.stream_seq, last_hash = appended.hash,
            anchored = false
        WHERE key = p_stream;
        head.last_seq := appended.stream_seq;
        head.last_hash := appended.hash;
        RETURN NEXT appended;
    END LOOP;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_protect_stream_heads")]

    operations = [
        migrations.RunSQL(APPEND, reverse_sql="DROP FUNCTION audit_append(text, jsonb);"),
    ]
