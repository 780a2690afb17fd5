"""chain.py on its own (the auditor's verifier): the two hash versions."""

import hashlib

from audit import chain


def _event(**changes) -> dict:
    event = {
        "sequence": 41,
        "time": "2026-11-22T05:40:34.726123+00:00",
        "stream": "run:7",
        "stream_seq": 1,
        "actor_type": "system",
        "actor_id": "",
        "actor_label": "warden",
        "action": "run.started",
        "target_type": "agents.run",
        "target_id": "7",
        "target_label": "run 7",
        "run": "7",
        "conversation": "3",
        "data": {"tokens": 12, "note": "é"},
        "prev_hash": chain.GENESIS,
    }
    return {**event, **changes}


def test_version_2_hashes_the_link_over_a_digest_of_the_content():
    event = _event()

    link = f"v2|{chain.GENESIS}|41|1|2026-11-22T05:40:34.726123+00:00|"
    link += chain.content_digest(event)

    assert chain.event_hash(event) == hashlib.sha256(link.encode()).hexdigest()
    assert chain.content_digest(event) != chain.content_digest(_event(actor_label="mallory"))


def test_events_written_before_version_2_still_verify_and_still_break_when_changed():
    legacy = _event()
    legacy["hash"] = chain.event_hash_v1(legacy)
    current = _event(sequence=42, stream_seq=2, prev_hash=legacy["hash"])
    current["hash"] = chain.event_hash(current)

    assert chain.verify([legacy, current], complete=True).ok
    changed = {**legacy, "action": "run.cancelled"}
    report = chain.verify([changed, current], complete=True)
    assert not report.ok
    assert "contents do not match" in report.first_break.reason
