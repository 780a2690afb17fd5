import json
from datetime import datetime
from typing import Any

from django.db import models

from audit import chain


class ActorType(models.TextChoices):
    USER = "user", "User"
    APPLICATION = "application", "Integration application"
    SYSTEM = "system", "System"


class AuditStream(models.Model):
    """The head of one hash chain of audit events (one per run, conversation or target).

    Appending to a stream locks its row for the rest of the writer's transaction, so a stream
    never forks while unrelated streams are written concurrently. `anchored` is false while
    the stream has events no anchor has recorded yet.
    """

    key = models.CharField(max_length=200, unique=True)
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=chain.GENESIS)
    anchored = models.BooleanField(default=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["key"], condition=models.Q(anchored=False), name="audit_stream_unanchored"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} (#{self.last_seq})"


class AuditEvent(models.Model):
    """One recorded decision or action. Append-only: the database rejects UPDATE, DELETE and
    TRUNCATE. `hash` covers every other field (see audit/chain.py); `prev_hash` is the hash of
    the previous event of the same stream.
    """

    sequence = models.BigAutoField(primary_key=True)
    time = models.DateTimeField(db_index=True)
    stream = models.CharField(max_length=200)
    stream_seq = models.BigIntegerField()
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    run = models.CharField(max_length=64, blank=True, db_index=True)
    conversation = models.CharField(max_length=64, blank=True, db_index=True)
    # Canonical JSON text, exactly as hashed: a jsonb column would re-spell numbers and keys.
    data = models.TextField(default="{}")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stream", "stream_seq"], name="audit_event_stream_seq"),
        ]
        indexes = [
            models.Index(fields=["actor_type", "actor_id"], name="audit_event_actor"),
            models.Index(fields=["target_type", "target_id"], name="audit_event_target"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} {self.target_type}:{self.target_id}"

    def as_chain_dict(self) -> dict[str, Any]:
        """The event as audit/chain.py hashes and exports it."""
        return {
            "sequence": self.sequence,
            "time": chain_time(self.time),
            "stream": self.stream,
            "stream_seq": self.stream_seq,
            "actor_type": self.actor_type,
            "actor_id": self.actor_id,
            "actor_label": self.actor_label,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "target_label": self.target_label,
            "run": self.run,
            "conversation": self.conversation,
            "data": json.loads(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


class AuditAnchor(models.Model):
    """A link of the global chain: the heads of every stream appended to since the last anchor.

    Written by a periodic task; it lets verification notice a stream cut short or removed.
    Append-only like the events.
    """

    sequence = models.BigAutoField(primary_key=True)
    time = models.DateTimeField()
    heads = models.TextField()  # canonical JSON {stream: [last_seq, last_hash]}
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    def __str__(self) -> str:
        return f"anchor {self.sequence}"

    def as_chain_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "time": chain_time(self.time),
            "heads": json.loads(self.heads),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def chain_time(moment: datetime) -> str:
    """Times are hashed as UTC ISO 8601 with microseconds, the precision PostgreSQL keeps."""
    from datetime import UTC

    return moment.astimezone(UTC).isoformat(timespec="microseconds")
