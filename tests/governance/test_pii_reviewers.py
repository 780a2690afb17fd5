"""Reviewers decide on someone else's run: they see its personal data as the audit trail keeps
it, a keyed hash and its kind (`[EMAIL:3f9a…]`), in the inbox, the REST API and the admin, while
the run's owner sees their own values and the tool, or the owner, gets the real ones. Real runs
(a scripted model over HTTP, the offline model), an HTTP tool calling a real endpoint, the pages
and the API through the test client, real PostgreSQL."""

import html
import json
import uuid

import pytest

from agents.models import Agent, Deployment, ModelRoute, Run, RunState
from audit.pii import hash_key, pseudonym
from audit.services import SYSTEM
from governance.models import Action, ApprovalRequest, Escalation
from governance.services import access_grant
from tests.governance.test_pii_trail import CARD, EMAIL, IBAN, PHONE, leaked
from tests.governance.test_provenance import ask, handbook
from tests.model_server import Reply
from tests.personas import resume
from tools.models import Tool
from tools.tests.endpoint import Answer

pytestmark = pytest.mark.django_db

TEXT = f"Register me: {EMAIL}, phone {PHONE}, IBAN {IBAN}, card {CARD}."
# What the customer desk's handbook says, read by the run before the call (its provenance).
CALLBACK = f"# Call-backs\n\nThe customer desk calls new customers back from {PHONE}."


def exposed(response) -> list[str]:
    """The personal values (any spelling of them, test_pii_trail.FORMS) in a response's body,
    as sent and once HTML- and JSON-unescaped."""
    text = response.content.decode()
    forms = [text, html.unescape(text)]
    if response.get("Content-Type", "").startswith("application/json"):
        forms.append(json.dumps(response.json(), ensure_ascii=False))
    return leaked("\n".join(forms))


def hashed(kind: str, value: str) -> str:
    return pseudonym(kind, value, key=hash_key())


@pytest.fixture
def register(crm, team):
    """A write tool (it waits for a reviewer) whose e-mail goes into the CRM's URL."""
    tool = Tool.objects.create(
        name=f"register_{uuid.uuid4().hex[:6]}",
        description="Register a customer in the CRM.",
        kind="http",
        risk="write",
        parameters={
            "type": "object",
            "properties": {"email": {"type": "string"}, "note": {"type": "string"}},
            "required": ["email", "note"],
        },
        config={
            "method": "POST",
            "url": crm.url("/customers"),
            "query": ["email"],
            "allow_networks": ["127.0.0.1/32"],
        },
        enabled=True,
    )
    crm.answers["/customers"] = [Answer(200, {"id": 7})]
    access_grant(obj=tool, holder=team, action=Action.USE, actor=SYSTEM)
    return tool


@pytest.fixture
def parked(server, team, people, register):
    """The member's run, parked on the call to `register` with their e-mail in its arguments,
    after reading a handbook passage with a phone number in it."""
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    agent = Agent.objects.create(
        name="Clerk", slug=f"c-{uuid.uuid4().hex[:6]}", route=route, confidence_threshold=0
    )
    agent.tools.add(register)
    for obj in (agent, route):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
    base = handbook(agent, people.member, CALLBACK)
    access_grant(obj=base, holder=people.reviewer, action=Action.READ, actor=SYSTEM)
    server.script(
        "primary",
        Reply.call(register.name, {"email": EMAIL, "note": "new customer"}),
        Reply.say(f"Registered {EMAIL}."),
    )
    run = ask(agent, people.member, TEXT)
    assert run.state == RunState.AWAITING_APPROVAL, run.error
    return ApprovalRequest.objects.get(run_id=run.pk)


def test_a_reviewer_sees_hashes_on_every_page_and_the_owner_sees_the_values(
    client, people, parked, crm
):
    email = hashed("EMAIL", EMAIL)
    assert parked.arguments == {"email": EMAIL, "note": "new customer"}  # kept for the tool
    client.force_login(people.reviewer)

    page = client.get(f"/inbox/approvals/{parked.pk}/")
    assert page.status_code == 200
    assert exposed(page) == []
    text = html.unescape(page.content.decode())
    assert f'"email": "{email}"' in text  # the exact arguments, hashed
    for kind, value in (("PHONE", PHONE), ("IBAN", IBAN), ("CARD", CARD)):
        assert hashed(kind, value) in text  # the conversation: the user's message, hashed
    assert 'id="provenance"' in text
    assert "The customer desk calls new customers back" in text
    assert exposed(client.get("/inbox/")) == []
    assert exposed(client.get(f"/runs/{parked.run_id}/")) == []  # the trace, as before

    for url in ("/api/v1/approvals", f"/api/v1/approvals/{parked.pk}"):
        response = client.get(url)
        assert response.status_code == 200
        assert exposed(response) == []
    [listed] = client.get("/api/v1/approvals").json()["results"]
    assert listed["arguments"] == {"email": email, "note": "new customer"}

    client.force_login(people.admin)  # a superuser, not the run's owner
    for url in (
        f"/admin/governance/approvalrequest/{parked.pk}/change/",
        "/admin/governance/approvalrequest/",
        f"/admin/agents/run/{parked.run_id}/change/",
    ):
        response = client.get(url)
        assert response.status_code == 200
        assert exposed(response) == [], url
    assert (
        email
        in client.get(f"/admin/governance/approvalrequest/{parked.pk}/change/").content.decode()
    )

    client.force_login(people.member)  # the owner: their own conversation, as they wrote it
    own = html.unescape(client.get(f"/runs/{parked.run_id}/").content.decode())
    assert EMAIL in own
    assert CARD in own
    assert crm.requests == []  # nothing ran while the reviewers looked


def test_an_edit_that_keeps_the_hash_runs_the_tool_with_the_real_value(client, people, parked, crm):
    email = hashed("EMAIL", EMAIL)
    client.force_login(people.reviewer)
    url = f"/inbox/approvals/{parked.pk}/"

    # The hash moved to another field: refused, saying why; nothing decided, nothing ran.
    moved = client.post(
        url,
        {"decision": "approve", "arguments": json.dumps({"email": email, "note": email})},
    )
    assert moved.status_code == 200
    assert (
        f"{email} in the edited arguments (at /note) stands for a hidden personal value"
        in html.unescape(moved.content.decode())
    )
    assert exposed(moved) == []
    parked.refresh_from_db()
    assert parked.status == "pending"

    # The reviewer edits the note and leaves the hashed e-mail where it was.
    edit = {"email": email, "note": "VIP customer"}
    decided = client.post(url, {"decision": "approve", "arguments": json.dumps(edit)})
    assert decided.status_code == 302
    parked.refresh_from_db()
    assert parked.approved_arguments == {"email": EMAIL, "note": "VIP customer"}
    run = resume(Run.objects.get(pk=parked.run_id))

    assert run.state == RunState.SUCCEEDED, run.error
    [request] = crm.requests  # what the tool received
    assert request.query == {"email": EMAIL}
    assert request.json() == {"note": "VIP customer"}
    decided = client.get(f"/api/v1/approvals/{parked.pk}")  # decided: still hashed
    assert decided.json()["approved_arguments"] == edit
    assert exposed(decided) == []


def test_an_api_reviewer_approves_with_hashes_and_the_tool_gets_the_values(
    client, people, parked, crm
):
    email = hashed("EMAIL", EMAIL)
    client.force_login(people.reviewer)
    url = f"/api/v1/approvals/{parked.pk}/decide"

    moved = client.post(
        url,
        {"decision": "approve", "arguments": {"email": email, "note": email}},
        content_type="application/json",
    )
    assert moved.status_code == 400
    assert "stands for a hidden personal value" in moved.json()["errors"]["arguments"][0]
    assert ApprovalRequest.objects.get(pk=parked.pk).status == "pending"

    # As shown: the arguments the list gave, sent back as the approved ones.
    [listed] = client.get("/api/v1/approvals").json()["results"]
    decided = client.post(
        url,
        {"decision": "approve", "arguments": listed["arguments"]},
        content_type="application/json",
    )

    assert decided.status_code == 200, decided.content
    assert decided.json()["approved_arguments"] == {"email": email, "note": "new customer"}
    assert exposed(decided) == []
    parked.refresh_from_db()
    assert (parked.approved_arguments, parked.edited) == (parked.arguments, False)
    assert resume(Run.objects.get(pk=parked.run_id)).state == RunState.SUCCEEDED
    [request] = crm.requests
    assert request.query == {"email": EMAIL}


@pytest.fixture
def held(people, team):
    """The offline model's answer, quoting the handbook's phone number, held for review (the
    agent holds every answer below 1, which the offline model's always is)."""
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", external=False)
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(
        name="Desk", slug=f"d-{uuid.uuid4().hex[:6]}", route=route, confidence_threshold=1
    )
    for obj in (agent, route):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
    base = handbook(agent, people.member, CALLBACK)
    # The answer draws on the member's handbook: a reviewer sees it only if they may read it.
    access_grant(obj=base, holder=people.reviewer, action=Action.READ, actor=SYSTEM)
    run = ask(agent, people.member, f"From which number does the customer desk call? {EMAIL}")
    assert run.state == RunState.AWAITING_REVIEW, run.error
    escalation = Escalation.objects.get(run_id=run.pk)
    assert PHONE in escalation.answer
    return escalation


def test_a_held_answer_is_hashed_for_reviewers_and_released_with_the_values(client, people, held):
    phone = hashed("PHONE", PHONE)
    client.force_login(people.reviewer)

    page = client.get(f"/inbox/answers/{held.pk}/")
    assert page.status_code == 200
    assert exposed(page) == []
    shown = held.answer.replace(PHONE, phone)
    text = html.unescape(page.content.decode())
    assert f'<textarea id="answer" name="answer" rows="6">{shown}</textarea>' in text
    assert hashed("EMAIL", EMAIL) in text  # the question
    listed = client.get("/api/v1/escalations")
    assert exposed(listed) == []
    assert listed.json()["results"][0]["answer"] == shown
    client.force_login(people.admin)
    for url in ("/admin/governance/escalation/", f"/admin/governance/escalation/{held.pk}/change/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert exposed(response) == [], url
    assert phone in response.content.decode()

    # Released as shown (the form sends the hashed text back): the owner gets the real answer.
    client.force_login(people.reviewer)
    released = client.post(
        f"/inbox/answers/{held.pk}/", {"decision": "release", "answer": shown, "comment": ""}
    )

    assert released.status_code == 302
    run = Run.objects.get(pk=held.run_id)
    assert (run.state, run.answer) == (RunState.SUCCEEDED, held.answer)
    held.refresh_from_db()
    assert held.released_answer == run.answer
    assert exposed(client.get("/api/v1/escalations")) == []
    client.force_login(people.member)
    chat = html.unescape(client.get(f"/chat/runs/{run.pk}/").content.decode())
    assert PHONE in chat


def test_an_edited_answer_with_a_hash_from_elsewhere_is_refused(client, people, held):
    client.force_login(people.reviewer)
    stranger = hashed("PHONE", "+44 20 7946 0958")

    refused = client.post(
        f"/inbox/answers/{held.pk}/",
        {"decision": "release", "answer": f"Call {stranger}.", "comment": ""},
    )

    assert refused.status_code == 200
    assert f"{stranger} in the answer stands for a hidden personal value" in html.unescape(
        refused.content.decode()
    )
    held.refresh_from_db()
    assert (held.status, held.released_answer) == ("pending", "")
    assert Run.objects.get(pk=held.run_id).state == RunState.AWAITING_REVIEW


# The two helpers underneath, on their own.


def test_a_hash_goes_back_to_its_value_only_where_the_value_was():
    from audit.pii import UnknownPseudonym, as_seen_by, unpseudonymise

    original = {"to": [EMAIL, "ops@example.org"], "card": 4111111111111111, "note": f"at {PHONE}"}
    shown = as_seen_by(original, viewer_id=1, owner_id=2)
    assert as_seen_by(original, viewer_id=2, owner_id=2) == original  # the owner's own
    assert as_seen_by(original, viewer_id=None, owner_id=None) == shown  # the console
    assert shown["card"] == hashed("CARD", CARD)
    edited = {**shown, "to": list(reversed(shown["to"])), "note": f"call {shown['note'][3:]}"}

    assert unpseudonymise(edited, original=original) == {
        "to": ["ops@example.org", EMAIL],  # a list's items are one place
        "card": 4111111111111111,  # a number again, as it was
        "note": f"call {PHONE}",
    }
    with pytest.raises(UnknownPseudonym, match=r"at /note$"):
        unpseudonymise({**shown, "note": shown["card"]}, original=original)
    with pytest.raises(UnknownPseudonym, match=r"at /extra$"):
        unpseudonymise({**shown, "extra": shown["to"][0]}, original=original)


def test_a_value_across_a_highlight_is_still_hashed():
    from audit.pii import pseudonymise_parts

    parts = [("mail jane.do", False), ("e@example.com now", True), (" or later", False)]

    assert pseudonymise_parts(parts, key=hash_key()) == [
        ("mail ", False),
        (f"{hashed('EMAIL', 'jane.doe@example.com')} now", True),
        (" or later", False),
    ]
