import contextlib
import datetime
import decimal
import enum
import json
import types
import uuid

import pytest
from django.contrib.auth.models import Group
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connection, transaction
from django.utils.translation import gettext_lazy

from audit import chain
from audit.models import AuditEvent, AuditStream
from audit.redaction import REDACTED, _scrubbed_key, is_secret_key
from audit.selectors import audit_verify_chain
from audit.services import (
    APPEND_ONE_FIELDS,
    SYSTEM,
    AuditError,
    Target,
    audit_draft,
    audit_record,
    audit_record_drafts,
)
from audit.tests.helpers import record

pytestmark = pytest.mark.django_db


def test_event_carries_actor_target_references_and_a_chained_hash(django_user_model):
    alice = django_user_model.objects.create_user("alice")

    with transaction.atomic():
        first = audit_record(
            actor=alice,
            action="run.started",
            target=Target("agents.run", "7", "run 7"),
            data={"tokens": 12},
            run=7,
            conversation=3,
        )
        second = audit_record(
            actor=None, action="run.finished", target=Target("agents.run", "7"), run=7
        )

    stored = AuditEvent.objects.get(sequence=first)
    assert (stored.actor_type, stored.actor_id, stored.actor_label) == (
        "user",
        str(alice.pk),
        "alice",
    )
    assert (stored.action, stored.target_type, stored.target_id) == (
        "run.started",
        "agents.run",
        "7",
    )
    assert (stored.run, stored.conversation, stored.stream, stored.stream_seq) == (
        "7",
        "3",
        "run:7",
        1,
    )
    assert json.loads(stored.data) == {"tokens": 12}
    assert stored.prev_hash == chain.GENESIS
    assert stored.hash == chain.event_hash(stored.as_chain_dict())
    later = AuditEvent.objects.get(sequence=second)
    assert (later.stream_seq, later.prev_hash, later.actor_type) == (2, stored.hash, "system")
    assert AuditStream.objects.get(key="run:7").last_hash == later.hash


def test_drafts_appended_together_are_one_chain_in_their_order(django_user_model):
    """audit_record_drafts appends several events of one stream in one statement: the same
    events, links and hashes as appending them one by one; outside a transaction, none."""
    alice = django_user_model.objects.create_user("alice")
    about = {"actor": alice, "target": Target("agents.run", "9"), "run": 9, "conversation": 4}
    drafts = [
        audit_draft(action="run.queued", data={"agent": "desk"}, **about),
        audit_draft(action="policy.decided", data={"effect": "allow"}, **about),
    ]
    with pytest.raises(AuditError, match="inside the acting service's transaction"):
        audit_record_drafts(drafts)
    assert not AuditEvent.objects.exists()

    with transaction.atomic():
        audit_record(actor=None, action="run.noted", target=Target("agents.run", "9"), run=9)
        audit_record_drafts(drafts)

    events = list(AuditEvent.objects.order_by("sequence"))
    assert [(e.action, e.stream, e.stream_seq) for e in events] == [
        ("run.noted", "run:9", 1),
        ("run.queued", "run:9", 2),
        ("policy.decided", "run:9", 3),
    ]
    assert [json.loads(e.data) for e in events[1:]] == [{"agent": "desk"}, {"effect": "allow"}]
    assert events[1].actor_label == "alice"
    assert [e.prev_hash for e in events[1:]] == [events[0].hash, events[1].hash]
    assert audit_verify_chain().ok


def test_rollback_leaves_no_event():
    before = AuditEvent.objects.count()

    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(actor=None, action="test.happened", target=Target("test.thing", "1"))
        raise RuntimeError("the action failed")

    assert AuditEvent.objects.count() == before
    assert not AuditStream.objects.filter(key="test.thing:1").exists()


def test_a_failing_audit_write_aborts_the_action():
    # A real database failure on the audit insert (not a mock): a trigger that refuses it.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_auditevent "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )

    with pytest.raises(DatabaseError, match="disk full"), transaction.atomic():
        group = Group.objects.create(name="Finance reviewers")
        audit_record(actor=None, action="group.created", target=group)

    assert not Group.objects.filter(name="Finance reviewers").exists()


@pytest.mark.usefixtures("committing_db")
def test_recording_outside_a_transaction_is_refused():
    # Autocommit: an event written here could outlive an action that then fails.
    with pytest.raises(AuditError, match="inside the acting service's transaction"):
        audit_record(actor=None, action="test.happened", target=Target("test.thing"))

    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("action", ["Run.Started", "started", "run started", "run.", ".run"])
def test_action_must_be_a_dotted_verb(action):
    with pytest.raises(AuditError, match="dotted lower-case verb"), transaction.atomic():
        audit_record(actor=None, action=action, target=Target("test.thing"))


def test_data_that_is_not_json_is_refused():
    with pytest.raises(AuditError, match="not JSON"), transaction.atomic():
        audit_record(
            actor=None, action="test.happened", target=Target("t"), data={"x": float("nan")}
        )


def test_data_json_has_no_type_for_is_stored_as_djangos_encoder_writes_it():
    when = datetime.datetime(2026, 12, 6, 9, 30, 15, 123456, tzinfo=datetime.UTC)
    data = {
        "at": when,
        "day": when.date(),
        "amount": decimal.Decimal("12.50"),
        "id": uuid.UUID(int=7),
        "pair": ("a", 1),
        3: "three",
        True: "yes",
        None: "none",
        2.5: "half",
        "nested": {"at": [when, {"amount": decimal.Decimal("0.1")}]},
    }
    with transaction.atomic():
        sequence = audit_record(actor=None, action="test.happened", target=Target("t"), data=data)

    stored = AuditEvent.objects.get(sequence=sequence)
    assert json.loads(stored.data) == json.loads(json.dumps(data, cls=DjangoJSONEncoder))
    assert stored.hash == chain.event_hash(stored.as_chain_dict())


def test_values_made_json_are_redacted_as_json():
    """Conversion comes before redaction: a lazy header name is a name, an IntEnum card a
    number, exactly as when the data went through json.dumps and json.loads first."""

    class Card(enum.IntEnum):
        TEST = 4111111111111111

    with transaction.atomic():
        sequence = audit_record(
            actor=None,
            action="test.happened",
            target=Target("t"),
            data={"header": [gettext_lazy("Authorization"), "Bearer abc.def"], "card": Card.TEST},
        )

    stored = json.loads(AuditEvent.objects.get(sequence=sequence).data)
    assert stored["header"] == ["Authorization", REDACTED]
    assert stored["card"].startswith("[CARD:")
    assert "4111111111111111" not in AuditEvent.objects.get(sequence=sequence).data


@pytest.mark.parametrize(
    "data",
    [
        {"x": {1, 2}},
        {"x": object()},
        {("a", "b"): 1},
        {"password": {1, 2}},
        {"x": types.MappingProxyType({"a": 1})},
    ],
    ids=["set", "object", "tuple key", "set under a secret's key", "mapping proxy"],
)
def test_data_json_cannot_hold_is_refused_and_nothing_written(data):
    before = AuditEvent.objects.count()
    with pytest.raises(AuditError, match="not JSON"), transaction.atomic():
        audit_record(actor=None, action="test.happened", target=Target("t"), data=data)
    assert AuditEvent.objects.count() == before


def test_each_field_lands_in_its_column_and_the_sequence_returned_is_the_row(django_user_model):
    """audit_append_one takes the fields as text parameters: each must reach its own column
    (and the digest the chain hashes them under), and the number returned is the row."""
    alice = django_user_model.objects.create_user("alice")
    with transaction.atomic():
        sequence = audit_record(
            actor=alice,
            action="run.started",
            target=Target("agents.run", "7", "run \x00seven"),
            data={"note": "café", "api_key": "sk-1"},
            run=8,
            conversation=9,
            stream="custom:stream",
        )

    stored = AuditEvent.objects.get(sequence=sequence)
    assert AuditEvent.objects.latest("sequence").sequence == sequence
    assert {name: getattr(stored, name) for name in (*APPEND_ONE_FIELDS, "stream")} == {
        "actor_type": "user",
        "actor_id": str(alice.pk),
        "actor_label": "alice",
        "action": "run.started",
        "target_type": "agents.run",
        "target_id": "7",
        "target_label": "run seven",
        "run": "8",
        "conversation": "9",
        "data": '{"api_key":"[redacted]","note":"café"}',
        "stream": "custom:stream",
    }
    assert stored.hash == chain.event_hash(stored.as_chain_dict())


def test_secrets_are_redacted_wherever_they_are_nested():
    with transaction.atomic():
        audit_record(
            actor=SYSTEM,
            action="tool.configured",
            target=Target("tools.tool", "9"),
            data={
                "name": "crm",
                "api_key": "sk-live-4242",
                "headers": [{"Authorization": "Bearer abc.def"}, {"X-Trace": "t1"}],
                "auth": {"client_secret": "hunter2", "password": "pw-123"},
            },
        )

    with connection.cursor() as cursor:
        cursor.execute("SELECT audit_auditevent::text FROM audit_auditevent")
        table = "\n".join(row[0] for row in cursor.fetchall())
    for secret in ("sk-live-4242", "abc.def", "hunter2", "pw-123"):
        assert secret not in table
    stored = json.loads(AuditEvent.objects.get(action="tool.configured").data)
    assert stored["api_key"] == REDACTED
    assert stored["headers"] == [{"Authorization": REDACTED}, {"X-Trace": "t1"}]
    assert stored["auth"] == {"client_secret": REDACTED, "password": REDACTED}


def test_chain_of_many_events_on_one_stream_verifies():
    with transaction.atomic():
        record(25, stream="run:1")

    report = audit_verify_chain()

    assert report.ok, report.summary()
    assert (report.events, report.streams) == (25, 1)


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("password1", True),
        ("new_password2", True),
        ("client_secret", True),
        ("api_key", True),
        ("X-Api-Key", True),
        ("apiKey", True),
        ("accessToken", True),
        ("Authorization", True),
        ("Set-Cookie", True),
        ("private_key_pem", True),
        ("csrfmiddlewaretoken", True),
        ("sessionid", True),
        ("PGPASSWORD", True),
        ("DB_PASS", True),
        ("pwd", True),
        ("otp", True),
        ("passwordHash", True),
        ("clientSecretValue", True),
        ("token_value", True),
        ("tokens", False),
        ("prompt_tokens", False),
        ("token_count", False),
        ("token_type", False),
        ("password_changed_at", False),
        ("idempotency_key", False),
        ("key", False),
        ("secretary", False),
        ("passage", False),
        ("compass", False),
    ],
)
def test_secret_keys_are_recognised_by_their_words(key, secret):
    assert is_secret_key(key) is secret


def test_secrets_inside_text_and_pairs_are_scrubbed():
    with transaction.atomic():
        sequence = audit_record(
            actor=SYSTEM,
            action="tool.invoked",
            target=Target("tools.tool", "1", "crm at postgres://svc:pw-in-url@db/crm"),
            data={
                "headers": [["Authorization", "Bearer eyJhbGciOi.J9.x"], ["Accept", "json"]],
                "callback": "https://example.com/cb?access_token=tok-in-query&page=2",
                "note": "retry with token abcdefgh12345678 later",
            },
        )

    stored = AuditEvent.objects.get(sequence=sequence)
    text = stored.data + stored.target_label
    for secret in ("eyJhbGciOi", "tok-in-query", "pw-in-url", "abcdefgh12345678"):
        assert secret not in text
    assert json.loads(stored.data)["headers"] == [["Authorization", REDACTED], ["Accept", "json"]]
    assert "page=2" in stored.data


def test_secrets_in_keys_are_scrubbed_each_time_the_key_comes_back():
    """A key's scrubbed form is remembered (keys repeat): the second event with it is
    scrubbed as the first."""
    short = "https://svc:pw-in-key@db.example.com/?token=tok-in-key"
    long = short + "&page=" + "9" * 200  # scrubbed each time, not remembered
    _scrubbed_key.cache_clear()
    with transaction.atomic():
        sequences = [
            audit_record(actor=None, action="test.happened", target=Target("t"), data={key: i})
            for key in (short, long)
            for i in range(2)
        ]

    for sequence in sequences:
        (stored_key,) = json.loads(AuditEvent.objects.get(sequence=sequence).data)
        assert "pw-in-key" not in stored_key
        assert "tok-in-key" not in stored_key
        assert stored_key.startswith("https://svc:[redacted]@db.example.com/")
    remembered = _scrubbed_key.cache_info()
    assert (remembered.currsize, remembered.hits) == (1, 1)  # the short key, found the 2nd time


def test_text_that_postgresql_cannot_store_is_cleaned_not_a_failure():
    with transaction.atomic():
        sequence = audit_record(
            actor=None,
            action="test.happened",
            target=Target("t", "1", "nul\x00here"),
            data={"s": "lone \ud800 surrogate"},
        )

    stored = AuditEvent.objects.get(sequence=sequence)
    assert stored.target_label == "nulhere"
    assert json.loads(stored.data) == {"s": "lone ? surrogate"}
    assert stored.hash == chain.event_hash(stored.as_chain_dict())


def test_a_swallowed_audit_error_still_rolls_the_action_back():
    with transaction.atomic():
        group = Group.objects.create(name="Shadow admins")
        with contextlib.suppress(AuditError):  # a careless caller
            audit_record(actor=None, action="Group.Created", target=group)

    assert not Group.objects.filter(name="Shadow admins").exists()


def test_event_time_comes_from_the_database_and_never_goes_back():
    with transaction.atomic():
        first, second = record(2, stream="run:9")
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            (transaction_start,) = cursor.fetchone()

    assert transaction_start <= first.time <= second.time
