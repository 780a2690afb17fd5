"""Concurrent writers on real PostgreSQL: the chains never fork, and unrelated streams never
wait for each other."""

import threading

import pytest
from django.db import OperationalError, connection, transaction

from audit.models import AuditEvent
from audit.selectors import audit_verify_chain
from audit.services import Target, audit_record

pytestmark = pytest.mark.usefixtures("committing_db")
WRITERS = 8
EVENTS = 30


def write(writer: int, start: threading.Barrier, errors: list) -> None:
    try:
        start.wait()
        for i in range(EVENTS):
            with transaction.atomic():  # one event per transaction, as actions commit
                audit_record(
                    actor=None,
                    action="step.done",
                    target=Target("test.writer", str(writer)),
                    data={"writer": writer, "i": i},
                    stream="run:shared" if i % 2 else f"run:{writer}",
                )
    except Exception as exc:  # reported by the test below
        errors.append(exc)
    finally:
        connection.close()


def test_concurrent_writers_produce_chains_that_verify():
    start, errors = threading.Barrier(WRITERS), []
    threads = [threading.Thread(target=write, args=(n, start, errors)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    report = audit_verify_chain()
    assert report.ok, report.summary()
    assert (report.events, report.streams) == (WRITERS * EVENTS, WRITERS + 1)
    shared = list(
        AuditEvent.objects.filter(stream="run:shared")
        .order_by("sequence")
        .values_list("stream_seq", flat=True)
    )
    assert shared == list(range(1, WRITERS * EVENTS // 2 + 1))  # no fork, no gap, in order


def test_an_open_transaction_holds_only_its_own_stream():
    recorded, release, done = threading.Event(), threading.Event(), threading.Event()

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                audit_record(actor=None, action="step.done", target=Target("t"), stream="run:slow")
                recorded.set()
                release.wait(30)
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    try:
        assert recorded.wait(30)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            audit_record(actor=None, action="step.done", target=Target("t"), stream="run:other")
        with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            audit_record(actor=None, action="step.done", target=Target("t"), stream="run:slow")
    finally:
        release.set()
        thread.join(30)

    assert done.is_set()
    assert list(AuditEvent.objects.order_by("sequence").values_list("stream", "stream_seq")) == [
        ("run:slow", 1),
        ("run:other", 1),
    ]
