"""warden-local, the offline model, through the same gateway as any provider."""

import json
import uuid

import pytest

from agents.gateway import gateway_complete
from agents.models import Deployment, ModelRoute

pytestmark = pytest.mark.django_db

SCHEMAS = {
    "create_ticket": (
        "Open an IT help-desk ticket for a problem the user reports.",
        {
            "type": "object",
            "required": ["title"],
            "properties": {
                "title": {"type": "string"},
                "priority": {"type": "string", "enum": ["low", "normal", "high"]},
            },
        },
    ),
    "get_ticket_status": (
        "Look up the status of an existing IT help-desk ticket by its number.",
        {"type": "object", "required": ["ticket"], "properties": {"ticket": {"type": "integer"}}},
    ),
    "book_meeting_room": (
        "Reserve a meeting room for a date and number of people.",
        {
            "type": "object",
            "required": ["date"],
            "properties": {
                "date": {"type": "string", "format": "date"},
                "people": {"type": "integer"},
            },
        },
    ),
    "submit_expense": (
        "Submit an expense claim with an amount and a category.",
        {
            "type": "object",
            "required": ["amount"],
            "properties": {
                "amount": {"type": "number"},
                "category": {
                    "type": "string",
                    "enum": ["travel", "meals", "other"],
                    "default": "other",
                },
            },
        },
    ),
    "get_leave_balance": (
        "Tell how many days of annual leave an employee has left.",
        {"type": "object", "properties": {}},
    ),
    "send_email": (
        "Send an email message to a colleague's address.",
        {
            "type": "object",
            "required": ["to", "body"],
            "properties": {"to": {"type": "string", "format": "email"}, "body": {"type": "string"}},
        },
    ),
}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": d, "parameters": p}}
    for name, (d, p) in SCHEMAS.items()
]
# Requests as people type them, and their tool. The weights and threshold in local.py were
# chosen on this set; HELD_OUT below was written afterwards and never tuned against.
LABELLED = [
    ("open a ticket, my laptop is broken", "create_ticket"),
    ("my VPN does not connect, please raise a ticket", "create_ticket"),
    ("the printer on floor 3 is jammed, can you log it?", "create_ticket"),
    ("report a problem: outlook keeps crashing", "create_ticket"),
    ("I need IT help, my screen flickers", "create_ticket"),
    ("what is the status of ticket 42?", "get_ticket_status"),
    ("any update on my ticket #1187", "get_ticket_status"),
    ("check ticket 7 for me", "get_ticket_status"),
    ("is ticket 311 resolved yet", "get_ticket_status"),
    ("look up ticket number 55", "get_ticket_status"),
    ("book a meeting room for 6 people on 2026-12-03", "book_meeting_room"),
    ("reserve a room for tomorrow for our team of 4", "book_meeting_room"),
    ("I need a conference room on Friday", "book_meeting_room"),
    ("can you get us a room for 10 people on 2027-02-01", "book_meeting_room"),
    ("schedule a room for the workshop on 2027-01-15", "book_meeting_room"),
    ("submit an expense of 45.50 for travel", "submit_expense"),
    ("claim 120 euros for the client dinner", "submit_expense"),
    ("I paid 30 for a taxi, file it as an expense", "submit_expense"),
    ("reimburse my hotel, 210.00", "submit_expense"),
    ("expense claim: 15 for parking", "submit_expense"),
    ("how many vacation days do I have left?", "get_leave_balance"),
    ("what's my remaining annual leave", "get_leave_balance"),
    ("check my holiday balance", "get_leave_balance"),
    ("how much leave can I still take this year", "get_leave_balance"),
    ("days off left?", "get_leave_balance"),
    ("email anna@example.com that the report is ready", "send_email"),
    ("send a message to bob@example.org saying I'm late", "send_email"),
    ("write to carol@example.com: meeting moved to 3pm", "send_email"),
    ("please mail dave@example.net the agenda", "send_email"),
    ("drop an email to erin@example.com about lunch", "send_email"),
    ("what is the capital of France?", None),
    ("tell me a joke", None),
    ("how does photosynthesis work", None),
    ("what's the weather like in Oslo", None),
    ("who won the football match yesterday", None),
]

HELD_OUT = [
    ("my keyboard stopped working, open a ticket please", "create_ticket"),
    ("log a ticket: cannot print from excel", "create_ticket"),
    ("status of ticket 902?", "get_ticket_status"),
    ("has ticket 18 been closed", "get_ticket_status"),
    ("book the big room on 2027-03-09 for 12 people", "book_meeting_room"),
    ("reserve a meeting room tomorrow", "book_meeting_room"),
    ("I spent 64.20 on meals with a customer, submit it", "submit_expense"),
    ("expense 300 for the flight to Lisbon, travel", "submit_expense"),
    ("how many days of leave remain for me", "get_leave_balance"),
    ("send frank@example.com an email saying the demo is at 2", "send_email"),
    ("what's the boiling point of water", None),
    ("summarise the history of Rome", None),
]


@pytest.fixture
def local_route():
    route = ModelRoute.objects.create(name=f"local-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    return route


def ask(route, text, tools=TOOLS, **kwargs):
    return gateway_complete(
        route=route, messages=[{"role": "user", "content": text}], tools=tools, **kwargs
    )


def test_routes_a_labelled_set_to_the_right_tools_and_never_to_an_unoffered_one(local_route):
    offered = {t["function"]["name"] for t in TOOLS}
    outcomes = []
    for text, expected in LABELLED:
        reply = ask(local_route, text)
        called = [c.name for c in reply.tool_calls]
        assert set(called) <= offered
        outcomes.append((text, expected, called[0] if called else None))

    right = sum(expected == got for _, expected, got in outcomes)
    misses = [o for o in outcomes if o[1] != o[2]]
    assert len(LABELLED) >= 30
    assert right / len(LABELLED) >= 0.9, misses


def test_routes_requests_it_was_not_tuned_on(local_route):
    outcomes = [
        (text, expected, next((c.name for c in ask(local_route, text).tool_calls), None))
        for text, expected in HELD_OUT
    ]

    right = sum(expected == got for _, expected, got in outcomes)
    assert right / len(HELD_OUT) >= 0.8, [o for o in outcomes if o[1] != o[2]]


def test_fills_arguments_from_the_schema(local_route):
    room = ask(local_route, "book a meeting room for 6 people on 2026-12-03").tool_calls[0]
    expense = ask(local_route, "submit an expense of 45.50 for travel").tool_calls[0]
    mail = ask(local_route, "email anna@example.com that the report is ready").tool_calls[0]
    status = ask(local_route, "what is the status of ticket 42?").tool_calls[0]

    assert json.loads(room.arguments) == {"date": "2026-12-03", "people": 6}
    assert json.loads(expense.arguments) == {"amount": 45.5, "category": "travel"}
    assert json.loads(mail.arguments) == {
        "to": "anna@example.com",
        "body": "email that the report is ready",
    }
    assert json.loads(status.arguments) == {"ticket": 42}


def test_never_calls_a_tool_when_its_required_arguments_are_missing(local_route):
    reply = ask(local_route, "send an email please")  # to whom?

    assert reply.tool_calls == []


def test_with_no_tools_offered_it_does_not_invent_one(local_route):
    reply = ask(local_route, "open a ticket, my laptop is broken", tools=[])

    assert reply.tool_calls == []
    assert reply.content.startswith("I don't know")


def test_states_tool_results(local_route):
    messages = [
        {"role": "user", "content": "open a ticket, my laptop is broken"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "create_ticket", "arguments": '{"title": "laptop"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"ticket": 12, "status": "open"}'},
    ]

    reply = gateway_complete(route=local_route, messages=messages, tools=TOOLS)

    assert reply.content == "Done. ticket: 12, status: open."
    assert reply.confidence == 0.9


def test_it_states_json_values_in_words_not_python_s(local_route):
    result = {"open": False, "escalated": True, "owner": None, "tags": ["vpn", "urgent"]}
    messages = [
        {"role": "user", "content": "is my ticket open?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "ticket_status", "arguments": '{"ticket": 12}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps(result)},
    ]

    reply = gateway_complete(route=local_route, messages=messages, tools=TOOLS)

    assert reply.content == "Done. open: no, escalated: yes, owner: none, tags: vpn, urgent."


def test_answers_from_passages_with_citations_or_says_it_does_not_know(local_route):
    system = {
        "role": "system",
        "content": (
            "Answer from these passages.\n"
            "[1] Employees get 25 days of annual leave per year. Unused days expire in March.\n"
            "[2] Expense claims must be filed within 30 days with a receipt.\n"
        ),
    }

    leave = gateway_complete(
        route=local_route,
        messages=[
            system,
            {"role": "user", "content": "How many days of annual leave do employees get?"},
        ],
    )
    unknown = gateway_complete(
        route=local_route,
        messages=[
            system,
            {"role": "user", "content": "What is the wifi password in the Berlin office?"},
        ],
    )

    assert leave.content.startswith("Employees get 25 days of annual leave per year. [1]")
    assert leave.confidence > 0.6
    assert unknown.content.startswith("I don't know")
    assert unknown.confidence < leave.confidence


def test_streams_through_the_gateway(local_route):
    tokens = []
    system = {"role": "system", "content": "[1] The help desk is open from 8 to 18 on weekdays."}

    reply = gateway_complete(
        route=local_route,
        messages=[system, {"role": "user", "content": "When is the help desk open?"}],
        on_token=tokens.append,
    )

    assert "".join(tokens) == reply.content
    assert len(tokens) > 3
    assert reply.confidence > 0.5  # streamed answers carry their confidence too
    assert reply.content.endswith("[1]")
