"""Personal data in an event's data is stored as a keyed hash, the same for every spelling of
a value; what only looks like it (ids, digests, times, addresses of machines) is kept as is."""

import json
import uuid

import pytest
from django.db import transaction

from audit.models import AuditEvent
from audit.pii import hash_key, pseudonym
from audit.selectors import audit_verify_chain
from audit.services import SYSTEM, Target, audit_record

pytestmark = pytest.mark.django_db


def stored(data: dict) -> dict:
    with transaction.atomic():
        sequence = audit_record(
            actor=SYSTEM, action="tool.invoked", target=Target("tools.tool", "1"), data=data
        )
    return json.loads(AuditEvent.objects.get(sequence=sequence).data)


def test_personal_values_are_stored_as_keyed_hashes_and_the_chain_verifies():
    data = stored(
        {
            "arguments": {
                "to": ["Jane.Doe@Example.com"],
                "note": "call +44 20 7946 0958 or jane.doe(at)example.com",
                "card": 4111111111111111,  # a card given as a JSON number
                "iban": "gb82 west 1234 5698 7654 32",
            }
        }
    )

    key = hash_key()
    email = pseudonym("EMAIL", "jane.doe@example.com", key=key)
    assert data["arguments"] == {
        "to": [email],
        "note": f"call {pseudonym('PHONE', '+442079460958', key=key)} or {email}",
        "card": pseudonym("CARD", "4111 1111 1111 1111", key=key),
        "iban": pseudonym("IBAN", "GB82WEST12345698765432", key=key),
    }
    assert audit_verify_chain().ok


def test_the_hash_depends_on_the_key(settings):
    before = stored({"to": "jane@example.com"})["to"]
    expected = pseudonym("EMAIL", "jane@example.com", key=hash_key())
    settings.WARDEN_PII_HASH_KEY = "another key"

    after = stored({"to": "jane@example.com"})["to"]

    assert before == expected
    assert before != after
    assert after == pseudonym("EMAIL", "jane@example.com", key=b"another key")


def test_look_alikes_are_kept_as_they_are():
    data = {
        "run": str(uuid.UUID(int=0x6A8AC4BA05805975ED2F89D94A2F20AA)),
        "version": "5d8f6cce532a7aeb57196be62344095936793400b3aeb3580d248b17d5518a86",
        "at": "2026-12-04T05:34:52.123456+00:00",
        "host": "192.168.100.200",
        "idempotency_key": "run:12:step:3:call:0",
        "tokens": 2125550134,
        "order": "2125550134",
        "cost": "0.000123",
    }

    assert stored(data) == data
