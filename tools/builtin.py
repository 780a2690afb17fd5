"""Built-in Python tools for the demo scenarios, each real: IT help-desk tickets (demo tables),
email through Django's mail backend, read-only SQL against a configured database (the demo
ERP in embedded mode) and meetings in a demo calendar table. They arrive disabled (see
tools.registry); the demo seed enables the ones its agents use."""

import hashlib
import logging
import re
import smtplib
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.core.validators import validate_email
from django.utils.dateparse import parse_datetime

from tools.executors import ToolError
from tools.models import DemoMeeting, DemoTicket
from tools.registry import ToolContext, python_tool

log = logging.getLogger(__name__)


@python_tool(
    name="create_ticket",
    description="Open an IT help-desk ticket for a problem the user reports.",
    parameters={
        "type": "object",
        "properties": {
            "title": {"type": "string", "description": "what is wrong, in a few words"},
            "priority": {"type": "string", "enum": ["low", "normal", "high"]},
        },
        "required": ["title"],
        "additionalProperties": False,
    },
    risk="write",
)
def create_ticket(arguments: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    ticket = DemoTicket.objects.create(
        title=arguments["title"],
        priority=arguments.get("priority", "normal"),
        idempotency_key=idempotency_key,
    )
    return {"ticket": ticket.pk, "status": "open", "priority": ticket.priority}


@python_tool(
    name="get_ticket_status",
    description="Look up the status of an existing IT help-desk ticket by its number.",
    parameters={
        "type": "object",
        "properties": {"ticket": {"type": "integer", "description": "the ticket number"}},
        "required": ["ticket"],
        "additionalProperties": False,
    },
)
def get_ticket_status(arguments: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    ticket = DemoTicket.objects.filter(pk=arguments["ticket"]).first()
    if ticket is None:
        return {"ticket": arguments["ticket"], "status": "not found"}
    return {"ticket": ticket.pk, "status": "open", "title": ticket.title}


# --- send_email ------------------------------------------------------------------------------


@python_tool(
    name="send_email",
    description="Send an email on the user's behalf (plain text).",
    parameters={
        "type": "object",
        "properties": {
            "to": {
                "type": "array",
                "items": {"type": "string", "format": "email", "maxLength": 254},
                "minItems": 1,
                "maxItems": 10,
                "uniqueItems": True,
            },
            "subject": {"type": "string", "minLength": 1, "maxLength": 200},
            "body": {"type": "string", "minLength": 1, "maxLength": 20_000},
        },
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
    },
    risk="write",
    external=True,
)
def send_email(
    arguments: dict[str, Any], *, idempotency_key: str, context: ToolContext
) -> dict[str, Any]:
    """Settings: `from` (default DEFAULT_FROM_EMAIL), `allowed_domains` (recipients outside
    them are refused; empty allows any). The Message-ID derives from the idempotency key, so a
    mail system that sees the same call twice can tell."""
    recipients = [address.strip() for address in arguments["to"]]
    for address in recipients:
        try:
            validate_email(address)
        except ValidationError:
            raise ToolError("invalid_arguments", f"{address!r} is not an email address") from None
    allowed = [d.lower() for d in context.settings.get("allowed_domains", [])]
    outside = [a for a in recipients if allowed and a.rsplit("@", 1)[1].lower() not in allowed]
    if outside:
        raise ToolError(
            "not_allowed",
            f"this tool may only write to {', '.join(allowed)}; not to {', '.join(outside)}",
        )
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    message = EmailMessage(
        subject=arguments["subject"],
        body=arguments["body"],
        from_email=context.settings.get("from") or settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers={
            "Message-ID": f"<{digest}@warden>",
            "X-Warden-Actor": getattr(context.actor, "username", "warden"),
        },
    )
    try:
        message.send()
    except (OSError, smtplib.SMTPException) as exc:
        raise ToolError("unavailable", f"the mail server refused or failed ({exc})") from None
    return {"sent": True, "to": recipients, "message_id": message.extra_headers["Message-ID"]}


# --- sql_query -------------------------------------------------------------------------------


@python_tool(
    name="sql_query",
    description="Run one read-only SQL SELECT against the sales/ERP database (PostgreSQL) and "
    "get the rows. Tables: demo_erp.customers(id, name, region, segment), "
    "demo_erp.products(id, sku, name, unit_price), demo_erp.orders(id, customer_id, "
    "ordered_on, status), demo_erp.order_lines(order_id, product_id, quantity).",
    parameters={
        "type": "object",
        "properties": {"sql": {"type": "string", "minLength": 1, "maxLength": 5000}},
        "required": ["sql"],
        "additionalProperties": False,
    },
)
def sql_query(
    arguments: dict[str, Any], *, idempotency_key: str, context: ToolContext
) -> dict[str, Any]:
    """Read-only by construction: the configured database's role may only SELECT; the
    transaction is READ ONLY; the query runs as a subquery (so one query, and no data-modifying
    WITH) under a LIMIT the server applies, sent by the extended protocol (which refuses a
    second statement); the tool's timeout is the statement timeout. Settings: `database`, a
    name in WARDEN_SQL_DATABASES (default "demo_erp"); `row_limit` (default 200)."""
    import psycopg
    from psycopg import sql

    name = context.settings.get("database", "demo_erp")
    row_limit = int(context.settings.get("row_limit", 200))
    query = arguments["sql"].strip().rstrip(";").strip()
    if not QUERY_START.match(query):
        raise ToolError("invalid_arguments", "only a query (SELECT, WITH, VALUES) can run here")
    conninfo = settings.WARDEN_SQL_DATABASES.get(name)
    if conninfo is None:
        raise ToolError("configuration", f"no database named {name!r} is configured")
    try:
        erp = psycopg.connect(conninfo, connect_timeout=5)
    except psycopg.OperationalError:
        log.exception("sql_query: cannot connect to the database %r", name)
        raise ToolError("unavailable", f"the database {name!r} cannot be reached") from None
    try:
        with erp:
            erp.read_only = True
            with erp.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    [str(int(context.timeout * 1000))],
                )
                with erp.pipeline() as pipeline:  # the extended protocol: one statement only
                    cursor.execute(
                        sql.SQL("SELECT * FROM ({}\n) AS query LIMIT {}").format(
                            sql.SQL(query), sql.Literal(row_limit + 1)
                        )
                    )
                    pipeline.sync()
                columns = [column.name for column in cursor.description or ()]
                rows = cursor.fetchall()
            erp.rollback()
    except psycopg.errors.QueryCanceled:
        raise ToolError("timeout", f"the query ran over {context.timeout:g} s") from None
    except psycopg.Error as exc:
        raise ToolError("sql_error", _sql_message(exc)) from None
    return {
        "columns": columns,
        "rows": [[_json_value(v) for v in row] for row in rows[:row_limit]],
        "truncated": len(rows) > row_limit,
    }


QUERY_START = re.compile(
    r"^(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(SELECT|WITH|VALUES|TABLE)\b", re.I | re.S
)


def _sql_message(error: Exception) -> str:
    diag = getattr(error, "diag", None)
    return (getattr(diag, "message_primary", None) or str(error).splitlines()[0])[:500]


def _json_value(value: object) -> bool | int | float | str | None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime, time)):
        return value.isoformat()
    return str(value)


# --- schedule_meeting ------------------------------------------------------------------------


@python_tool(
    name="schedule_meeting",
    description="Put a meeting in the shared calendar and invite the attendees.",
    parameters={
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "start": {
                "type": "string",
                "description": "ISO 8601 date and time with its UTC offset, such as "
                "2026-12-01T14:00:00+01:00",
            },
            "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 480},
            "attendees": {
                "type": "array",
                "items": {"type": "string", "maxLength": 254},
                "minItems": 1,
                "maxItems": 50,
            },
        },
        "required": ["title", "start", "attendees"],
        "additionalProperties": False,
    },
    risk="write",
)
def schedule_meeting(
    arguments: dict[str, Any], *, idempotency_key: str, context: ToolContext
) -> dict[str, Any]:
    try:
        start = parse_datetime(arguments["start"])
    except ValueError:  # well formed, but no such date (month 13)
        start = None
    if start is None or start.tzinfo is None:
        raise ToolError(
            "invalid_arguments",
            f"start {arguments['start']!r} is not an ISO 8601 date and time with a UTC offset",
        )
    minutes = arguments.get("duration_minutes", 30)
    meeting = DemoMeeting.objects.create(
        title=arguments["title"],
        start=start,
        end=start + timedelta(minutes=minutes),
        attendees=arguments["attendees"],
        organiser=getattr(context.actor, "username", ""),
        idempotency_key=idempotency_key,
    )
    clashes = DemoMeeting.objects.filter(
        start__lt=meeting.end, end__gt=meeting.start, attendees__overlap=meeting.attendees
    ).exclude(pk=meeting.pk)
    return {
        "meeting": meeting.pk,
        "start": meeting.start.isoformat(),
        "end": meeting.end.isoformat(),
        "clashes": [{"meeting": m.pk, "title": m.title} for m in clashes[:5]],
    }
