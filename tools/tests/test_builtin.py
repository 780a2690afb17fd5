"""The built-in tools, each against the real thing: PostgreSQL for sql_query (as the read-only
demo ERP role), Django's mail backend for send_email, the demo calendar for schedule_meeting."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from audit.pii import hash_key, pseudonym
from tools.models import DemoMeeting, Tool, ToolInvocation
from tools.registry import ToolContext
from tools.services import tool_invoke

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return get_user_model().objects.create_user("sam")


def tool(name: str, **fields) -> Tool:
    row = Tool.objects.get(name=name)
    for field, value in {"enabled": True, **fields}.items():
        setattr(row, field, value)
    row.save()
    return row


def call(row: Tool, arguments: dict, user, key: str | None = None):
    key = key or f"run:1:step:{uuid.uuid4().int % 10**8}:call:0"
    return tool_invoke(tool=row, arguments=arguments, key=key, context=ToolContext(actor=user))


@pytest.fixture
def erp(demo_erp):
    return tool("sql_query")


def test_sql_query_reads_the_demo_erp(erp, user):
    outcome = call(
        erp,
        {
            "sql": "SELECT c.name, sum(l.quantity * p.unit_price) AS revenue "
            "FROM demo_erp.orders o JOIN demo_erp.customers c ON c.id = o.customer_id "
            "JOIN demo_erp.order_lines l ON l.order_id = o.id "
            "JOIN demo_erp.products p ON p.id = l.product_id "
            "WHERE o.status <> 'cancelled' AND c.name LIKE 'A%' GROUP BY c.name"
        },
        user,
    )

    assert outcome.result == {
        "columns": ["name", "revenue"],
        "rows": [["Acme Logistics", "74530.00"]],  # 40x1249 + 40x189 + 60x119 + 30x329
        "truncated": False,
    }


def test_sql_query_cuts_at_the_row_limit_in_the_database(erp, user):
    erp.config = {"function": "sql_query", "settings": {"row_limit": 3}}
    erp.save()

    outcome = call(erp, {"sql": "SELECT id FROM demo_erp.orders ORDER BY id;"}, user)
    endless = call(erp, {"sql": "SELECT generate_series(1, 1e12) AS g"}, user)

    assert outcome.result == {"columns": ["id"], "rows": [[101], [102], [103]], "truncated": True}
    assert endless.result["rows"] == [["1"], ["2"], ["3"]]  # numeric: as text, exact


@pytest.mark.parametrize(
    ("sql", "kind", "message"),
    [
        ("DELETE FROM demo_erp.orders", "invalid_arguments", "only a query"),
        ("SET ROLE postgres", "invalid_arguments", "only a query"),
        ("SELECT pg_read_file('/etc/passwd')", "sql_error", "permission denied for function"),
        ("SELECT * FROM tools_secret", "sql_error", 'relation "tools_secret" does not exist'),
        ("SELECT 1; DELETE FROM demo_erp.orders", "sql_error", 'syntax error at or near ";"'),
        (
            "WITH gone AS (DELETE FROM demo_erp.orders RETURNING id) SELECT * FROM gone",
            "sql_error",
            "must be at the top level",
        ),
        ("SELECT set_config('role', 'postgres', false)", "sql_error", "permission denied"),
        ("SELECT nextval('x')", "sql_error", 'relation "x" does not exist'),
        ("SELECT * FROM nowhere", "sql_error", 'relation "nowhere" does not exist'),
    ],
)
def test_sql_query_cannot_write_or_read_beyond_its_schema(erp, user, sql, kind, message):
    outcome = call(erp, {"sql": sql}, user)

    assert outcome.result["error"]["type"] == kind
    assert message in outcome.result["error"]["message"]
    assert call(erp, {"sql": "SELECT count(*) FROM demo_erp.orders"}, user).result["rows"] == [[7]]


def test_sql_query_stops_at_the_tools_timeout(erp, user):
    erp.timeout = 1
    erp.save()

    outcome = call(erp, {"sql": "SELECT pg_sleep(5)"}, user)

    assert outcome.result["error"] == {"type": "timeout", "message": "the query ran over 1 s"}
    assert outcome.latency_ms < 4000


def test_sql_query_names_an_unknown_database(erp, user):
    erp.config = {"function": "sql_query", "settings": {"database": "finance"}}
    erp.save()

    outcome = call(erp, {"sql": "SELECT 1"}, user)

    assert outcome.result["error"] == {
        "type": "configuration",
        "message": "no database named 'finance' is configured",
    }


def test_send_email_sends_once_per_key_with_a_message_id_from_it(user):
    row = tool("send_email")
    arguments = {"to": ["dana@example.com"], "subject": "Q4 numbers", "body": "Attached."}

    first = call(row, arguments, user, key="run:5:step:2:call:0")
    again = call(row, arguments, user, key="run:5:step:2:call:0")

    (message,) = mail.outbox
    assert (message.to, message.subject, message.body) == (
        ["dana@example.com"],
        "Q4 numbers",
        "Attached.",
    )
    assert message.extra_headers["Message-ID"] == first.result["message_id"]
    assert message.extra_headers["X-Warden-Actor"] == "sam"
    assert again.reused
    # The ledger keeps personal data as keyed hashes: the reused result carries the hash.
    hashed = pseudonym("EMAIL", "dana@example.com", key=hash_key())
    assert again.result == {**first.result, "to": [hashed]}


def test_send_email_keeps_to_the_allowed_domains(user):
    row = tool(
        "send_email",
        config={"function": "send_email", "settings": {"allowed_domains": ["example.com"]}},
    )

    outcome = call(
        row, {"to": ["dana@example.com", "x@evil.test"], "subject": "s", "body": "b"}, user
    )

    assert outcome.result["error"] == {
        "type": "not_allowed",
        "message": "this tool may only write to example.com; not to x@evil.test",
    }
    assert mail.outbox == []


def test_schedule_meeting_books_reports_clashes_and_refuses_a_bad_time(user):
    row = tool("schedule_meeting")
    book = {"title": "QBR", "start": "2026-12-01T14:00:00+01:00", "attendees": ["dana", "eve"]}

    first = call(row, {**book, "duration_minutes": 60}, user)
    clash = call(row, {**book, "title": "Sync", "start": "2026-12-01T14:30:00+01:00"}, user)
    bad = call(row, {**book, "start": "tomorrow at 2"}, user)

    assert first.result["end"] == "2026-12-01T15:00:00+01:00"
    assert clash.result["clashes"] == [{"meeting": first.result["meeting"], "title": "QBR"}]
    assert bad.result["error"]["type"] == "invalid_arguments"
    assert DemoMeeting.objects.count() == 2
    assert ToolInvocation.objects.filter(tool="schedule_meeting", status="failed").count() == 1
