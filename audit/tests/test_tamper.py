"""Tampering, done as the database superuser with the triggers off, is found by verification.

Each test checks the report names the first broken sequence number, and that the command fails.
"""

import pytest
from django.core.management import call_command
from django.db import transaction

from audit import chain
from audit.models import AuditEvent
from audit.selectors import audit_verify_chain
from audit.services import Target, audit_anchor, audit_record
from audit.tests.helpers import tampering

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail():
    """Two interleaved streams of five events each; returns {stream: [sequence, ...]}."""
    streams: dict[str, list[int]] = {"run:1": [], "run:2": []}
    with transaction.atomic():
        for i in range(5):
            for run in (1, 2):
                sequence = audit_record(
                    actor=None,
                    action="step.done",
                    target=Target("agents.run", str(run)),
                    data={"step": i},
                    run=run,
                )
                streams[f"run:{run}"].append(sequence)
    assert audit_verify_chain().ok
    return streams


def verify_fails_at(sequence: int, reason: str) -> chain.Report:
    report = audit_verify_chain()
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.sequence == sequence, report.summary()
    assert reason in report.first_break.reason
    return report


def test_changed_field_is_found(trail):
    victim = trail["run:2"][2]
    with tampering() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET data = '{\"step\":99}' WHERE sequence = %s", [victim]
        )

    verify_fails_at(victim, "contents do not match the stored hash")


def test_changed_field_with_a_recomputed_hash_breaks_the_next_link(trail):
    victim, following = trail["run:1"][1], trail["run:1"][2]
    forged = AuditEvent.objects.get(sequence=victim).as_chain_dict()
    forged["actor_label"] = "mallory"
    with tampering() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET actor_label = 'mallory', hash = %s WHERE sequence = %s",
            [chain.event_hash(forged), victim],
        )

    verify_fails_at(following, "prev_hash does not match event #2")


def test_deleted_row_is_found(trail):
    victim, following = trail["run:1"][2], trail["run:1"][3]
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = %s", [victim])

    verify_fails_at(following, "event #3 of this stream is missing")


def test_inserted_row_is_found(trail):
    last = AuditEvent.objects.get(sequence=trail["run:2"][-1]).as_chain_dict()
    forged = {
        **last,
        "sequence": last["sequence"] + 100,
        "stream_seq": 6,
        "prev_hash": last["hash"],
        "action": "payment.approved",
        "data": {"amount": 10000},
    }
    forged["hash"] = chain.event_hash(forged)  # a well-formed event, correctly linked
    columns = [*chain.EVENT_FIELDS, "hash"]
    with tampering() as cursor:
        cursor.execute(
            f"INSERT INTO audit_auditevent ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})",
            [chain.canonical_json(forged[c]) if c == "data" else forged[c] for c in columns],
        )

    # The stream's head (kept by every append) still says #5.
    verify_fails_at(forged["sequence"], "the stream's head records #5, but its last event is #6")


def test_inserted_row_with_a_made_up_hash_is_found(trail):
    last = AuditEvent.objects.get(sequence=trail["run:1"][-1]).as_chain_dict()
    with tampering() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditevent (sequence, time, stream, stream_seq, actor_type,"
            " actor_id, actor_label, action, target_type, target_id, target_label, run,"
            " conversation, data, prev_hash, hash) VALUES (%s, now(), 'run:1', 6, 'system', '',"
            " 'warden', 'step.done',"
            " 'agents.run', '1', '', '1', '', '{}', %s, %s)",
            [last["sequence"] + 50, last["hash"], "f" * 64],
        )

    verify_fails_at(last["sequence"] + 50, "contents do not match the stored hash")


def test_two_rows_swapped_are_found(trail):
    # The two events trade places in the trail's order: their sequence numbers are exchanged.
    first, second = trail["run:2"][1], trail["run:2"][3]
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET sequence = -1 WHERE sequence = %s", [first])
        cursor.execute(
            "UPDATE audit_auditevent SET sequence = %s WHERE sequence = %s", [first, second]
        )
        cursor.execute("UPDATE audit_auditevent SET sequence = %s WHERE sequence = -1", [second])

    report = verify_fails_at(first, "contents do not match the stored hash")
    reasons = {(b.sequence, b.reason.split(" (")[0].split(":")[0]) for b in report.breaks}
    assert (first, "event #2 to #3 of this stream is missing") in reasons
    assert (second, "out of order") in reasons


def test_two_rows_contents_exchanged_are_found(trail):
    first, second = trail["run:2"][1], trail["run:2"][3]
    moved = ("time", "stream_seq", "data", "prev_hash", "hash")
    rows = {
        e["sequence"]: e for e in AuditEvent.objects.filter(sequence__in=[first, second]).values()
    }
    with tampering() as cursor:
        # Every column but the sequence number, through a placeholder (unique constraints).
        cursor.execute(
            "UPDATE audit_auditevent SET stream_seq = -1, hash = 'x' WHERE sequence = %s", [first]
        )
        for target, source in ((second, first), (first, second)):
            cursor.execute(
                "UPDATE audit_auditevent SET time = %s, stream_seq = %s, data = %s, "
                "prev_hash = %s, hash = %s WHERE sequence = %s",
                [*(rows[source][name] for name in moved), target],
            )

    verify_fails_at(first, "contents do not match the stored hash")


def test_backdated_event_is_found(trail):
    victim = AuditEvent.objects.get(sequence=trail["run:1"][3]).as_chain_dict()
    forged = {**victim, "time": "2020-01-01T00:00:00.000000+00:00"}
    with tampering() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET time = %s, hash = %s WHERE sequence = %s",
            [forged["time"], chain.event_hash(forged), victim["sequence"]],
        )

    report = audit_verify_chain()
    assert any(
        b.sequence == victim["sequence"] and "backdated" in b.reason for b in report.breaks
    ), report.summary()


def test_deleted_head_row_is_found(trail):
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditstream WHERE key = 'run:1'")

    verify_fails_at(trail["run:1"][-1], "the stream's head row is missing")


def test_truncated_stream_is_found_through_its_anchor(trail):
    audit_anchor()
    last_two = trail["run:1"][-2:]
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = ANY(%s)", [last_two])
        # A careful tamperer also rewinds the stream's head.
        cursor.execute(
            "UPDATE audit_auditstream SET last_seq = 3, last_hash = %s WHERE key = 'run:1'",
            [AuditEvent.objects.get(sequence=trail["run:1"][2]).hash],
        )

    verify_fails_at(trail["run:1"][2], "events after #3 are missing (anchor")


def test_removed_stream_is_found_through_its_anchor(trail):
    audit_anchor()
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE stream = 'run:2'")
        cursor.execute("DELETE FROM audit_auditstream WHERE key = 'run:2'")

    report = audit_verify_chain()
    assert [(b.stream, b.stream_seq) for b in report.breaks] == [("run:2", 5)]
    assert report.breaks[0].reason.startswith("the stream is missing (anchor ")


def test_changed_anchor_is_found(trail):
    anchor = audit_anchor()
    with tampering() as cursor:
        cursor.execute(
            "UPDATE audit_auditanchor SET heads = '{}' WHERE sequence = %s", [anchor.sequence]
        )

    report = audit_verify_chain()
    assert f"anchor {anchor.sequence} was changed, removed or reordered" in report.summary()


def test_command_reports_ok_with_counts(trail, capsys):
    call_command("audit_verify")

    assert capsys.readouterr().out == "OK: 10 events in 2 streams verified\n"


def test_command_fails_naming_the_first_broken_sequence(trail, capsys):
    victim = trail["run:1"][3]
    with tampering() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET target_label = 'x' WHERE sequence = %s", [victim]
        )

    with pytest.raises(SystemExit) as exited:
        call_command("audit_verify")

    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"BROKEN at sequence {victim} (stream run:1, event #4): contents do not match"
    )
