import contextlib
import sys
from datetime import datetime
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.selectors import EventFilter, audit_export_lines


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not an ISO 8601 date or time: {value!r}") from None
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


class Command(BaseCommand):
    help = (
        "Export audit events as JSONL or CSV, streamed, with their hashes. Verify an export "
        "offline with `python3 audit/chain.py EXPORT` (add --complete for an unfiltered one)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")
        parser.add_argument("--since", type=_moment, help="from this time (ISO 8601, inclusive)")
        parser.add_argument("--until", type=_moment, help="before this time (ISO 8601)")
        parser.add_argument("--actor", default="", help="user, user:ID, system or a username")
        parser.add_argument("--action", default="", help="an action, or a prefix such as run.*")
        parser.add_argument("--target", default="", help="TYPE or TYPE:ID, e.g. auth.user:3")
        parser.add_argument("--run", default="", help="a run id")
        parser.add_argument(
            "--anchors",
            metavar="FILE",
            help="also write the anchors (same snapshot) to FILE, for `chain.py --anchors`",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        filters = EventFilter(
            since=options["since"],
            until=options["until"],
            actor=options["actor"],
            action=options["action"],
            target=options["target"],
            run=options["run"],
        )
        with contextlib.ExitStack() as files:
            out = _open(files, options["output"]) if options["output"] else sys.stdout
            anchors = _open(files, options["anchors"]) if options["anchors"] else None
            lines = audit_export_lines(filters=filters, fmt=options["format"], anchors_to=anchors)
            count = -1 if options["format"] == "csv" else 0  # the CSV header is not an event
            for line in lines:
                out.write(line)
                count += 1
        if options["output"]:
            self.stderr.write(f"exported {count} events to {options['output']}")


def _open(files: contextlib.ExitStack, path: str) -> TextIO:
    try:
        return files.enter_context(open(path, "w", encoding="utf-8", newline=""))
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
