"""Log lines as JSON (`WARDEN_LOG_FORMAT=json`): one object per line, with what the line was
about (the request, the run, the user, the trace and span), for a log pipeline to index; and
the filter that keeps the frequent sweeps' task lines out of the console (RoutineTasks).

Nothing secret and nothing personal leaves in one: the message and any traceback go through
the audit trail's scrubbing (secrets by their shape, personal data as keyed hashes), as an
event's data does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from audit.pii import hash_key, pseudonymise
from audit.redaction import REDACTED, is_secret_key, scrub
from telemetry import context, tracing

# `name=value` or `name: value` anywhere in a line (an exception's message, a repr): the value
# is dropped when the name is a secret's by the audit trail's rule ("password", "client_secret",
# "X-Api-Key"; not "token_count").
_NAME = re.compile(r"""([A-Za-z][A-Za-z0-9_.-]*)["']?\s*[=:]\s*""")
_VALUE = re.compile(r""""[^"]*"|'[^']*'|[^\s,;&"')\]}]+""")


# What LogRecord has of its own; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def clean(text: str) -> str:
    """`text` with secrets scrubbed and personal data as keyed hashes."""
    text = scrub(text)
    if "=" in text or ":" in text:
        text = _unassigned(text)
    return pseudonymise(text, key=hash_key())


def _unassigned(text: str) -> str:
    out, at = [], 0
    for name in _NAME.finditer(text):
        if name.start() < at or not is_secret_key(name.group(1)):
            continue
        if text.startswith(REDACTED, name.end()):  # scrubbed already
            continue
        value = _VALUE.match(text, name.end())
        if value is not None:
            out += [text[at : value.start()], REDACTED]
            at = value.end()
    return "".join(out) + text[at:]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": clean(record.getMessage()),
        }
        if request_id := context.request_id():
            line["request_id"] = request_id
        if (run := context.run_id.get()) is not None:
            line["run_id"] = run
        if (user := context.user_id()) is not None:
            line["user_id"] = user
        trace_id, span_id = tracing.current_ids()
        if trace_id:
            line["trace_id"], line["span_id"] = trace_id, span_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value if isinstance(value, int | float | bool) else clean(str(value))
        if record.exc_info:
            line["error"] = {
                "type": record.exc_info[0].__qualname__ if record.exc_info[0] else "",
                "trace": clean(self.formatException(record.exc_info)),
            }
        return json.dumps(line, ensure_ascii=False, default=str)


class RoutineTasks(logging.Filter):
    """Celery logs at INFO every task beat sends and every task a worker receives and finishes:
    for the frequent sweeps (the tasks of `CELERY_BEAT_SCHEDULE` due every minute or more
    often; run-resume every 3 s) that was 60 lines a minute, which scrolled `make run`'s banner
    and its demo sign-ins away within seconds and buried every line worth reading after them.
    Each process logs each sweep's first line of each of these three kinds (the schedule
    visibly runs) and drops its later ones until the process itself logs a warning or an error
    (the worker's lost broker, a sweep failing in a pool process): the next ones after it show
    the sweep running again. A pool process logs its own first `succeeded`. A sweep's retries,
    warnings and failures, and every other task's lines, pass."""

    def __init__(self, *, tasks: list[str]) -> None:
        from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

        super().__init__()
        self.tasks = frozenset(tasks)
        self.kinds = {
            ("celery.beat", "Scheduler: Sending due task %s (%s)"),
            ("celery.worker.strategy", LOG_RECEIVED),
            ("celery.app.trace", LOG_SUCCESS),
        }
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            self.seen.clear()
            return True
        kind = (record.name, record.msg)
        if record.levelno < logging.INFO or kind not in self.kinds:
            return True
        args = record.args
        # beat's: ("run-resume", "agents.tasks.run_resume_task"); a worker's: {"name": ...}
        task = args.get("name") if isinstance(args, Mapping) else (args or (None,))[-1]
        if not isinstance(task, str) or task not in self.tasks:
            return True
        if (record.name, task) in self.seen:
            return False
        self.seen.add((record.name, task))
        return True
