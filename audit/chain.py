#!/usr/bin/env python3
"""Warden's audit hash chain: the canonical form of an event, its hash, and verification.

Standard library only, on purpose: this file is also the auditor's standalone verifier.
Copy it anywhere with Python 3.10+ and run

    python3 chain.py export.jsonl              # or export.csv
    python3 chain.py --complete export.jsonl   # an unfiltered export: streams start at #1, no gaps
    python3 chain.py --complete --anchors anchors.jsonl export.jsonl

It exits 0 and prints "OK" when every event's hash matches its contents and every link that the
export contains holds; otherwise it prints the first broken link (lowest sequence) and exits 1.
Only with the anchors (``audit_export --anchors FILE``) can it also tell that a whole stream,
or the end of one, is missing from an unfiltered export.

The canonical form is Python's ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` (floats in Python's shortest round-trip notation), encoded as UTF-8.

The chain design (see audit/services.py): events are grouped into streams (one per run,
conversation or target), each a hash chain of its own: event n of a stream stores the hash of
event n-1 (`prev_hash`) and its own `hash`, which covers every field:

    content = SHA-256 of the canonical JSON of {"v": 2, stream, actor_*, action, target_*, run,
              conversation, data}                                       (lower-case hex)
    hash    = SHA-256 of "v2|<prev_hash>|<sequence>|<stream_seq>|<time>|<content>"

The second line is what PostgreSQL computes while it appends (it draws the sequence and the
time under the stream's lock), so the writer needs one statement. Events written before this
scheme carry version 1: SHA-256 of the canonical JSON of all their fields with "v": 1; both are
checked. Streams let unrelated runs write concurrently; anchors (a second, global chain)
periodically record every stream's head, so a stream's truncation before its last anchor, or
its removal, is detected too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
VERSION = 2
# The fields that are hashed, in export order; `hash` is the last column of an export.
EVENT_FIELDS = (
    "sequence",
    "time",
    "stream",
    "stream_seq",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "target_label",
    "run",
    "conversation",
    "data",
    "prev_hash",
)
CSV_COLUMNS = (*EVENT_FIELDS, "hash")
# Spreadsheets execute cells that start with these; such cells get a leading apostrophe in CSV,
# and a cell that starts with an apostrophe gets one more, so the escape is reversible.
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def canonical_json(value: object) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 text, no NaN or infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# What the content digest covers: everything but the fields the database draws under the
# stream's lock (sequence, stream_seq, time) and the link (prev_hash).
CONTENT_FIELDS = tuple(
    name for name in EVENT_FIELDS if name not in ("sequence", "stream_seq", "time", "prev_hash")
)


def content_digest(event: dict[str, Any]) -> str:
    payload = {name: event[name] for name in CONTENT_FIELDS}
    payload["v"] = VERSION
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def event_hash(event: dict[str, Any]) -> str:
    link = "|".join(
        [
            f"v{VERSION}",
            event["prev_hash"],
            str(event["sequence"]),
            str(event["stream_seq"]),
            event["time"],
            content_digest(event),
        ]
    )
    return hashlib.sha256(link.encode()).hexdigest()


def event_hash_v1(event: dict[str, Any]) -> str:
    """The hash of events written before version 2."""
    payload = {name: event[name] for name in EVENT_FIELDS}
    payload["v"] = 1
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def anchor_hash(anchor: dict[str, Any]) -> str:
    payload = {
        "v": 1,  # anchors kept their scheme when events moved to version 2
        "sequence": anchor["sequence"],
        "time": anchor["time"],
        "heads": anchor["heads"],
        "prev_hash": anchor["prev_hash"],
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass(frozen=True, order=True)
class Break:
    """A broken link: the event (or anchor) where verification first fails, and why."""

    sequence: int
    stream: str
    stream_seq: int
    reason: str

    def __str__(self) -> str:
        where = f"sequence {self.sequence}" if self.sequence >= 0 else "anchor"
        return f"{where} (stream {self.stream}, event #{self.stream_seq}): {self.reason}"


MAX_BREAKS = 1000  # kept for the report; beyond that only counted


@dataclass
class Report:
    events: int = 0
    streams: int = 0
    anchors: int = 0
    unchecked_gaps: int = 0
    breaks: list[Break] = field(default_factory=list)
    problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_break(self) -> Break | None:
        return min(self.breaks) if self.breaks else None

    def add(self, problem: Break) -> None:
        self.problems += 1
        if len(self.breaks) < MAX_BREAKS:
            self.breaks.append(problem)
        elif problem < max(self.breaks):  # keep the lowest sequences: the first break stays
            self.breaks.remove(max(self.breaks))
            self.breaks.append(problem)

    def summary(self) -> str:
        if self.ok:
            text = f"OK: {self.events} events in {self.streams} streams verified"
            if self.anchors:
                text += f", {self.anchors} anchors"
            if self.unchecked_gaps:
                text += f" ({self.unchecked_gaps} gaps not checkable: events outside the export)"
            return text
        return f"BROKEN at {self.first_break} [{self.problems} problem(s) in all]"


# A stream's last event so far: (stream_seq, hash, sequence, time)
_LastEvent = tuple[int, str, int, str]
# stream -> the highest (stream_seq, hash, anchor sequence) any anchor recorded
_Anchored = dict[str, tuple[int, str, int]]


def verify(
    events: Iterable[dict[str, Any]],
    *,
    complete: bool,
    anchors: Iterable[dict[str, Any]] = (),
    heads: Iterable[tuple[str, int, str]] | None = None,
) -> Report:
    """Verify events given in sequence order, keeping only each stream's last event in memory.

    Within a stream, sequence order is chain order (both are taken under the stream's lock) and
    time does not go back (it is the database's clock, read under that lock). `complete` says
    the events are all there are (a database walk or an unfiltered export): a stream must then
    start at #1 and have no gaps; otherwise a gap is counted, not failed. `anchors` (in sequence
    order) are checked as a chain and against the events; `heads` are the (stream, last_seq,
    last_hash) rows the database keeps for appending, one for every stream.
    """
    report = Report()
    anchored = _check_anchors(anchors, report)
    last: dict[str, _LastEvent] = {}
    for event in events:
        report.events += 1
        stream, seq = event["stream"], event["stream_seq"]
        previous = last.get(stream)
        _check_event(
            event=event, previous=previous, anchored=anchored, complete=complete, report=report
        )
        if previous is None or seq > previous[0]:
            last[stream] = (seq, event["hash"], event["sequence"], event["time"])
    report.streams = len(last)
    _check_anchored_ends(anchored=anchored, last=last, complete=complete, report=report)
    if heads is not None:
        _check_heads(heads=heads, last=last, report=report)
    return report


def _check_event(
    *,
    event: dict[str, Any],
    previous: _LastEvent | None,
    anchored: _Anchored,
    complete: bool,
    report: Report,
) -> None:
    """One event against its own hash, its stream's previous event and the anchors."""
    stream, seq, sequence = event["stream"], event["stream_seq"], event["sequence"]
    here = (sequence, stream, seq)
    computed = event_hash(event)
    if computed != event["hash"] and event_hash_v1(event) != event["hash"]:
        report.add(
            Break(
                *here,
                "contents do not match the stored hash (changed after it "
                f"was written; stored {event['hash'][:12]}…, computed "
                f"{computed[:12]}…)",
            )
        )
    _check_link(event=event, previous=previous, complete=complete, report=report)
    if previous is not None and event["time"] < previous[3]:
        report.add(
            Break(
                *here,
                f"its time {event['time']} is earlier than event "
                f"#{previous[0]}'s ({previous[3]}): backdated",
            )
        )
    top = anchored.get(stream)
    if top is not None and top[0] == seq and top[1] != event["hash"]:
        report.add(Break(*here, f"differs from what anchor {top[2]} recorded"))


def _check_link(
    *,
    event: dict[str, Any],
    previous: _LastEvent | None,
    complete: bool,
    report: Report,
) -> None:
    """The event's place in its stream: the next number, linked to the previous event's hash."""
    seq = event["stream_seq"]
    here = (event["sequence"], event["stream"], seq)
    expected_seq = 1 if previous is None else previous[0] + 1
    if seq == expected_seq:
        expected_prev = GENESIS if previous is None else previous[1]
        if event["prev_hash"] != expected_prev:
            what = "the stream's start" if previous is None else f"event #{seq - 1}"
            report.add(
                Break(
                    *here,
                    f"prev_hash does not match {what} (an event was "
                    "inserted, removed or reordered before it)",
                )
            )
    elif seq < expected_seq:
        report.add(Break(*here, f"out of order: expected event #{expected_seq} of this stream"))
    elif complete:
        missing = f"#{expected_seq}" + (f" to #{seq - 1}" if seq - 1 > expected_seq else "")
        report.add(Break(*here, f"event {missing} of this stream is missing"))
    else:
        report.unchecked_gaps += 1


def _check_anchored_ends(
    *, anchored: _Anchored, last: dict[str, _LastEvent], complete: bool, report: Report
) -> None:
    """Each stream an anchor recorded is there (in a complete walk) and reaches that far."""
    for stream, (top_seq, _digest, anchor_seq) in anchored.items():
        if stream not in last:
            if complete:
                report.add(
                    Break(
                        -1,
                        stream,
                        top_seq,
                        f"the stream is missing (anchor {anchor_seq} recorded it at #{top_seq})",
                    )
                )
        elif top_seq > last[stream][0]:
            seq, _hash, sequence, _time = last[stream]
            report.add(
                Break(
                    sequence,
                    stream,
                    seq,
                    f"events after #{seq} are missing (anchor {anchor_seq} recorded #{top_seq})",
                )
            )


def _check_heads(
    *, heads: Iterable[tuple[str, int, str]], last: dict[str, _LastEvent], report: Report
) -> None:
    """Each stream's head row names its last event, and every stream has one."""
    headless = set(last)
    for stream, head_seq, head_hash in heads:
        headless.discard(stream)
        seq, digest, sequence, _time = last.get(stream, (0, GENESIS, -1, ""))
        if (head_seq, head_hash) != (seq, digest):
            report.add(
                Break(
                    sequence,
                    stream,
                    seq,
                    f"the stream's head records #{head_seq}, "
                    f"but its last event is #{seq} (events "
                    "removed or added)",
                )
            )
    for stream in headless:
        seq, _digest, sequence, _time = last[stream]
        report.add(Break(sequence, stream, seq, "the stream's head row is missing"))


def _check_anchors(
    anchors: Iterable[dict[str, Any]], report: Report
) -> dict[str, tuple[int, str, int]]:
    """Check the anchor chain; return, per stream, the highest (stream_seq, hash, anchor) any
    anchor recorded: what truncation and removal are measured against."""
    top: dict[str, tuple[int, str, int]] = {}
    previous_hash = GENESIS
    for anchor in anchors:
        report.anchors += 1
        if anchor["prev_hash"] != previous_hash or anchor_hash(anchor) != anchor["hash"]:
            report.add(
                Break(
                    -1,
                    "(anchors)",
                    anchor["sequence"],
                    f"anchor {anchor['sequence']} was changed, removed or reordered",
                )
            )
        for stream, (seq, digest) in anchor["heads"].items():
            if stream not in top or seq >= top[stream][0]:
                top[stream] = (seq, digest, anchor["sequence"])
        previous_hash = anchor["hash"]
    return top


# --- exports -------------------------------------------------------------------------------


def export_row(event: dict[str, Any]) -> dict[str, Any]:
    """An event as exported: every hashed field, then the hash."""
    return {name: event[name] for name in CSV_COLUMNS}


def csv_escape(cell: str) -> str:
    return "'" + cell if cell.startswith(_CSV_FORMULA_START) else cell


def csv_unescape(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def csv_cells(event: dict[str, Any]) -> list[str]:
    cells = []
    for name in CSV_COLUMNS:
        value = event[name]
        if name == "data":
            value = canonical_json(value)
        cells.append(csv_escape("" if value is None else str(value)))
    return cells


def read_export(lines: Iterable[str], fmt: str) -> Iterator[dict[str, Any]]:
    if fmt == "jsonl":
        for line in lines:
            if line.strip():
                yield json.loads(line)
        return
    rows = csv.reader(lines)
    header = next(rows)
    if tuple(header) != CSV_COLUMNS:
        raise ValueError(f"unexpected CSV header: {header}")
    for row in rows:
        cells = dict(zip(CSV_COLUMNS, (csv_unescape(cell) for cell in row), strict=True))
        event: dict[str, Any] = {**cells, "data": json.loads(cells["data"])}
        for name in ("sequence", "stream_seq"):
            event[name] = int(cells[name])
        yield event


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="chain.py", description="Verify a Warden audit export.")
    parser.add_argument("export", help="EXPORT.jsonl or EXPORT.csv")
    parser.add_argument(
        "--complete",
        action="store_true",
        help="the export is unfiltered: every stream must be whole",
    )
    parser.add_argument("--anchors", help="the anchors exported with it (JSON lines)")
    args = parser.parse_args(argv)
    fmt = "csv" if args.export.endswith(".csv") else "jsonl"
    try:
        anchors = []
        if args.anchors:
            with open(args.anchors, encoding="utf-8") as handle:
                anchors = list(read_export(handle, "jsonl"))
        with open(args.export, newline="", encoding="utf-8") as handle:
            report = verify(read_export(handle, fmt), complete=args.complete, anchors=anchors)
    except (OSError, ValueError, KeyError) as exc:
        print(f"chain.py: cannot read the export: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
