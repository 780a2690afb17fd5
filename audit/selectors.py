"""Reading the audit trail: filtered, keyset-paginated walks that never load it whole."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import Q, QuerySet

from audit import chain
from audit.models import ActorType, AuditAnchor, AuditEvent, AuditStream, chain_time

CHUNK = 2000
_COLUMNS = list(chain.CSV_COLUMNS)


@dataclass(frozen=True)
class EventFilter:
    """Export filters; empty means any. `actor` is ``type``, ``type:id`` or a label (username);
    `action` is exact or a prefix ending in ``.*``; `target` is ``type`` or ``type:id``."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str = ""
    action: str = ""
    target: str = ""
    run: str = ""

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.since:
            events = events.filter(time__gte=self.since)
        if self.until:
            events = events.filter(time__lt=self.until)
        if self.actor:
            kind, _, ident = self.actor.partition(":")
            if ident:
                events = events.filter(actor_type=kind, actor_id=ident)
            elif kind in ActorType.values:
                events = events.filter(actor_type=kind)
            else:
                events = events.filter(actor_label=self.actor)
        if self.action.endswith(".*"):
            events = events.filter(action__startswith=self.action[:-1])
        elif self.action:
            events = events.filter(action=self.action)
        if self.target:
            kind, _, ident = self.target.partition(":")
            events = events.filter(Q(target_type=kind) & (Q(target_id=ident) if ident else Q()))
        if self.run:
            events = events.filter(run=self.run)
        return events


def audit_events_iter(*, events: QuerySet[AuditEvent] | None = None) -> Iterator[dict[str, Any]]:
    """Events in sequence order as chain dicts, fetched CHUNK rows at a time."""
    events = AuditEvent.objects.all() if events is None else events
    after = 0
    while True:
        rows = list(
            events.filter(sequence__gt=after).order_by("sequence").values_list(*_COLUMNS)[:CHUNK]
        )
        for row in rows:
            event = dict(zip(_COLUMNS, row, strict=True))
            event["time"] = chain_time(event["time"])
            event["data"] = json.loads(event["data"])
            yield event
        if len(rows) < CHUNK:
            return
        after = rows[-1][0]


@contextlib.contextmanager
def _snapshot() -> Iterator[None]:
    """One REPEATABLE READ transaction, so a walk in many queries sees one state of the trail.

    Inside a caller's transaction the caller's isolation applies.
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                # A download that stalls must not hold the snapshot (and vacuum) back forever.
                cursor.execute("SET LOCAL idle_in_transaction_session_timeout = '5min'")
        yield


def audit_verify_chain() -> chain.Report:
    """Walk every event, anchor and stream head in one consistent snapshot."""
    with _snapshot():
        heads = AuditStream.objects.values_list("key", "last_seq", "last_hash").iterator(CHUNK)
        return chain.verify(
            audit_events_iter(), complete=True, anchors=audit_anchors_iter(), heads=heads
        )


def audit_anchors_iter() -> Iterator[dict[str, Any]]:
    for anchor in AuditAnchor.objects.order_by("sequence").iterator(CHUNK):
        yield anchor.as_chain_dict()


def audit_export_lines(
    *, filters: EventFilter, fmt: str, anchors_to: IO[str] | None = None
) -> Generator[str, None, None]:
    """The export, line by line (JSONL or CSV), of the events matching `filters`.

    With `anchors_to`, every anchor of the same snapshot is written there as JSON lines first,
    so an auditor can check offline that no stream, nor the end of one, is missing.
    """
    events = filters.apply(AuditEvent.objects.all())
    with _snapshot():
        if anchors_to is not None:
            for anchor in audit_anchors_iter():
                anchors_to.write(chain.canonical_json(anchor) + "\n")
        if fmt == "csv":
            yield _csv_line(chain.CSV_COLUMNS)
            for event in audit_events_iter(events=events):
                yield _csv_line(chain.csv_cells(event))
        else:
            for event in audit_events_iter(events=events):
                yield chain.canonical_json(chain.export_row(event)) + "\n"


def _csv_line(cells: Iterable[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue()


def may_view_audit(user: AbstractUser | AnonymousUser | None) -> bool:
    """Whether `user` may read and export the trail: the admin's rule, the model's view
    permission (superusers hold every permission)."""
    return bool(user is not None and user.is_active and user.has_perm("audit.view_auditevent"))


# A run's own record (queued, each step, its end) and every policy decision are many events a
# run: the trail's readers find those from the run; the side panel shows the rest.
_ROUTINE_PREFIXES = ("run.", "policy.decided")


def audit_recent_for(
    user: AbstractUser | AnonymousUser, *, limit: int = 10
) -> tuple[list[AuditEvent], bool]:
    """The latest events worth showing `user` first, and whether they are everyone's.

    Those who may read the trail get everyone's governance events (not runs' routine ones);
    anyone else gets only what they did themselves, as Django's "Recent actions" did.
    """
    everyone = may_view_audit(user)
    events = AuditEvent.objects.all()
    for prefix in _ROUTINE_PREFIXES:
        events = events.exclude(action__startswith=prefix)
    if not everyone:
        events = events.filter(actor_type=ActorType.USER, actor_id=str(user.pk))
    return list(events.order_by("-sequence")[:limit]), everyone
