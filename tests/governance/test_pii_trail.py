"""Personal data a user gives reaches the tool that needs it and no record anyone else reads:
not the audit trail (append-only, exported: a value written there could never be erased), not
the tool ledger, not a log line, not the trace page or the admin's view of the run. A real run:
a scripted model over HTTP, an HTTP tool calling a real endpoint, real PostgreSQL."""

import json
import logging
import re
import uuid
from urllib.parse import unquote_plus

import pytest

from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunState, RunStep
from agents.orchestrator import run_execute
from agents.services import run_start
from audit.models import AuditEvent
from audit.pii import hash_key, pseudonym
from audit.services import SYSTEM
from governance.models import Action
from governance.services import access_grant
from tests.model_server import Reply
from tools.models import Tool, ToolInvocation
from tools.tests.endpoint import Answer

pytestmark = pytest.mark.django_db

# As the user types them, in the forms an outside tester found the redactor missing.
EMAIL = "jane.doe(at)example.com"
PHONE = "0151 23456789"
IBAN = "de89 3704 0044 0532 0130 00"
CARD = "4111.1111.1111.1111"
# Every spelling a record could hold one of them in: as typed, without separators, as the
# restorer or a tool could normalise it.
FORMS = {
    "EMAIL": [EMAIL, "jane.doe@example.com", "jane.doe"],
    "PHONE": [PHONE, "015123456789", "+4915123456789", "23456789"],
    "IBAN": [IBAN, "DE89370400440532013000", "de89370400440532013000", "0532 0130"],
    "CARD": [CARD, "4111111111111111", "4111 1111 1111 1111", "1111.1111"],
}


def leaked(text: str) -> list[str]:
    """The forms found in `text`, also once URL-decoded (a URL's query, as logged)."""
    text = f"{text}\n{unquote_plus(text)}".lower()
    return [form for forms in FORMS.values() for form in forms if form.lower() in text]


@pytest.fixture
def crm_tool(crm, team):
    # The e-mail goes in the URL's query (which an HTTP client may log), the rest in the body.
    tool = Tool.objects.create(
        name=f"register_{uuid.uuid4().hex[:6]}",
        description="Register a customer in the CRM.",
        kind="http",
        parameters={
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("email", "phone", "iban", "card")},
            "required": ["email", "phone", "iban", "card"],
        },
        config={
            "method": "POST",
            "url": crm.url("/customers"),
            "query": ["email"],
            "allow_networks": ["127.0.0.1/32"],
        },
        enabled=True,
        approval="never",
    )
    # The CRM echoes what it stored, as systems do: the result carries the values too.
    crm.answers["/customers"] = [
        Answer(200, {"id": 7, "email": EMAIL, "phone": PHONE, "iban": IBAN, "card": CARD})
    ]
    access_grant(obj=tool, holder=team, action=Action.USE, actor=SYSTEM)
    return tool


@pytest.fixture
def clerk(server, team, crm_tool):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    agent = Agent.objects.create(
        name="Clerk", slug=f"c-{uuid.uuid4().hex[:6]}", route=route, confidence_threshold=0
    )
    agent.tools.add(crm_tool)
    for obj in (agent, route):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
    return agent


@pytest.mark.parametrize("external", [True, False], ids=["external-route", "internal-route"])
def test_personal_data_reaches_the_tool_and_no_record_anyone_else_reads(
    client, caplog, server, crm, clerk, crm_tool, people, external
):
    ModelRoute.objects.filter(pk=clerk.route_id).update(external=external)
    clerk.refresh_from_db()
    # An external route's model sees placeholders and writes them; an internal one the values.
    values = (
        {"email": "[EMAIL_1]", "phone": "[PHONE_1]", "iban": "[IBAN_1]", "card": "[CARD_1]"}
        if external
        else {"email": EMAIL, "phone": PHONE, "iban": IBAN, "card": CARD}
    )
    server.script(
        "primary",
        Reply.call(crm_tool.name, values),
        Reply.say(f"Registered {values['email']}, card {values['card']}."),
    )
    text = f"Register me: {EMAIL}, phone {PHONE}, IBAN {IBAN}, card {CARD}."
    caplog.set_level(logging.DEBUG)

    conversation = Conversation.objects.create(owner=people.member, agent=clerk)
    run = run_start(agent=clerk, conversation=conversation, actor=people.member, input=text)
    run_execute(run_id=run.pk, holder="test")
    run = Run.objects.get(pk=run.pk)

    assert run.state == RunState.SUCCEEDED, run.error
    # The tool got the real values.
    [request] = crm.requests
    assert request.query == {"email": EMAIL}
    assert request.json() == {"phone": PHONE, "iban": IBAN, "card": CARD}
    if external:
        assert leaked(json.dumps(server.requests["primary"])) == []
    # The audit trail: every event, this run's and any other, holds keyed hashes.
    trail = "\n".join(AuditEvent.objects.values_list("data", flat=True))
    assert leaked(trail) == []
    invoked = AuditEvent.objects.get(run=str(run.pk), action="tool.invoked")
    arguments = json.loads(invoked.data)["arguments"]
    key = hash_key()
    assert arguments == {
        "email": pseudonym("EMAIL", EMAIL, key=key),
        "phone": pseudonym("PHONE", PHONE, key=key),
        "iban": pseudonym("IBAN", IBAN, key=key),
        "card": pseudonym("CARD", CARD, key=key),
    }
    # The same value however written has the same hash: a person's request can be answered.
    assert arguments["card"] == pseudonym("CARD", "4111 1111 1111 1111", key=key)
    assert arguments["email"] == pseudonym("EMAIL", "Jane.Doe@example.com", key=key)
    # The ledger.
    [row] = ToolInvocation.objects.filter(tool=crm_tool.name)
    assert leaked(json.dumps(row.arguments) + json.dumps(row.result)) == []
    assert row.arguments["card"] == arguments["card"]
    # Every log line of the run, whoever wrote it (Warden, httpx, litellm).
    lines = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert leaked(lines) == [], [line for line in lines.splitlines() if leaked(line)]
    # The run as others see it: the trace page of a governance admin, and the admin console.
    client.force_login(people.admin)
    trace = client.get(f"/runs/{run.pk}/")
    assert trace.status_code == 200
    assert leaked(trace.content.decode()) == []
    assert pseudonym("EMAIL", EMAIL, key=key) in trace.content.decode()  # the question, hashed
    console = client.get(f"/admin/agents/run/{run.pk}/change/")
    assert console.status_code == 200
    assert "tool_calls" in console.content.decode()  # the steps are there, hashed
    assert leaked(console.content.decode()) == []
    # The owner sees the conversation as it was: the values are in their chat, restored.
    assert run.answer == f"Registered {EMAIL}, card {CARD}."
    client.force_login(people.member)
    own = client.get(f"/runs/{run.pk}/").content.decode()
    assert EMAIL in own.replace("&#x27;", "'")
    steps = json.dumps([s.input for s in RunStep.objects.filter(run=run)])
    assert re.search(re.escape(json.dumps(CARD)), steps)  # kept for the run, which is theirs
