"""Every API endpoint against every persona, on objects that belong to someone (IDOR): each
table is what each persona gets, exactly; a refused write changes nothing.

Every persona's token carries every scope, so what decides here is governance: ownership,
object permissions, reviewer rights, model permissions. (Scopes and missing credentials have
their own tests: test_foundation, test_tokens, test_schema_fuzz.)"""

from dataclasses import dataclass

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from agents.knowledge.models import Document
from agents.models import Conversation, Run, RunState
from governance.models import ApprovalRequest, ApprovalStatus, Escalation, EscalationStatus
from integrations.tokens import token_create
from tests.personas import PERSONAS, parked

pytestmark = pytest.mark.django_db


@dataclass
class World:
    auth: dict  # persona -> headers
    finished: Run  # the member's, done
    queued: Run  # the member's, to cancel
    approval: ApprovalRequest  # on the member's run, for a reviewer
    held: Escalation  # the member's held answer, for a reviewer
    document: Document


@pytest.fixture
def world(people, governed, help_desk, server):
    scopes = list(settings.OAUTH2_PROVIDER["SCOPES"])
    auth = {"anonymous": {}}
    for name in PERSONAS[:-1]:
        _, secret = token_create(user=people.named(name), name="t", scopes=scopes, days=1)
        auth[name] = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    conversation = Conversation.objects.create(owner=people.member, agent=governed.agent)

    def run(state):
        return Run.objects.create(
            agent=governed.agent,
            conversation=conversation,
            actor=people.member,
            input="hi",
            state=state,
        )

    finished, queued = run(RunState.SUCCEEDED), run(RunState.QUEUED)
    approval = ApprovalRequest.objects.get(run_id=parked(server, help_desk, people.member).pk)
    held_run = run(RunState.AWAITING_REVIEW)
    held = Escalation.objects.create(
        run_id=held_run.pk,
        agent_id=governed.agent.pk,
        requested_by=people.member,
        question="leave?",
        answer="Maybe 25 days.",
        confidence="0.400",
        threshold="0.80",
    )
    document = Document.objects.create(knowledge_base=governed.knowledge_base, source="x", size=1)
    return World(auth, finished, queued, approval, held, document)


def table(client, world, call, unchanged=None, last=()) -> dict:
    """What each persona gets. For a write, the personas in `last` go last (the write is theirs
    to make) and every refusal before them is followed by `unchanged()`."""
    got = {}
    for name in sorted(PERSONAS, key=lambda p: p in last):
        response = call(client, world.auth[name])
        got[name] = response.status_code
        if unchanged is not None and name not in last:
            assert response.status_code >= 400, name
            unchanged()
    return {p: got[p] for p in PERSONAS}


def seen(client, world, url: str, key: str, value) -> dict:
    """For a list: each persona's status, and whether the object is in what they see."""
    got = {}
    for name in PERSONAS:
        response = client.get(url, **world.auth[name])
        listed = response.status_code == 200 and any(
            item[key] == value for item in response.json()["results"]
        )
        got[name] = (response.status_code, listed)
    return got


def expect(**statuses) -> dict:
    return {name: statuses[name] for name in PERSONAS}


NOBODY_ELSE = {p: 404 for p in PERSONAS} | {"anonymous": 401}


def test_agents(client, world, governed):
    assert seen(client, world, "/api/v1/agents", "slug", governed.agent.slug) == expect(
        admin=(200, True),
        reviewer=(200, False),
        member=(200, True),
        outsider=(200, False),
        denied=(200, False),
        integration=(200, True),
        anonymous=(401, False),
    )


def test_starting_a_run(client, world, governed):
    def start(client, auth):
        url = f"/api/v1/agents/{governed.agent.slug}/runs"
        return client.post(url, {"input": "hello"}, content_type="application/json", **auth)

    before = Run.objects.count()

    def unchanged():
        assert Run.objects.count() == before

    got = table(client, world, start, unchanged, last=("admin", "member", "integration"))

    assert got == expect(
        admin=202,
        reviewer=404,
        member=202,
        outsider=404,
        denied=404,
        integration=202,
        anonymous=401,
    )


@pytest.mark.parametrize("suffix", ["", "/events"])
def test_a_run_and_its_events_are_the_owners(client, world, suffix):
    url = f"/api/v1/runs/{world.finished.pk}{suffix}"

    got = table(client, world, lambda c, auth: c.get(url, **auth))

    assert got == NOBODY_ELSE | {"member": 200}


def test_cancelling_a_run(client, world):
    def unchanged():
        world.queued.refresh_from_db()
        assert (world.queued.state, world.queued.cancel_requested) == (RunState.QUEUED, False)

    url = f"/api/v1/runs/{world.queued.pk}/cancel"
    got = table(client, world, lambda c, auth: c.post(url, **auth), unchanged, last=("member",))

    assert got == NOBODY_ELSE | {"member": 200}


def test_conversations(client, world):
    conversation = world.finished.conversation_id
    url = f"/api/v1/conversations/{conversation}"

    assert table(client, world, lambda c, auth: c.get(url, **auth)) == NOBODY_ELSE | {"member": 200}
    assert seen(client, world, "/api/v1/conversations", "id", conversation) == {
        p: (200, p == "member") for p in PERSONAS
    } | {"anonymous": (401, False)}


def test_approvals(client, world):
    pk = world.approval.pk
    reviewers = {"reviewer": 200, "admin": 200}

    assert seen(client, world, "/api/v1/approvals", "id", pk) == {
        p: (200, p in reviewers) for p in PERSONAS
    } | {"anonymous": (401, False)}
    got = table(client, world, lambda c, auth: c.get(f"/api/v1/approvals/{pk}", **auth))
    assert got == NOBODY_ELSE | reviewers


def test_deciding_an_approval(client, world):
    def unchanged():
        world.approval.refresh_from_db()
        assert world.approval.status == ApprovalStatus.PENDING

    def decide(client, auth):
        url = f"/api/v1/approvals/{world.approval.pk}/decide"
        return client.post(url, {"decision": "reject"}, content_type="application/json", **auth)

    got = table(client, world, decide, unchanged, last=("admin", "reviewer"))

    # The first reviewer decides; the next one is told it is decided already.
    assert got == NOBODY_ELSE | {"admin": 200, "reviewer": 409}


def test_held_answers(client, world):
    pk = world.held.pk

    def unchanged():
        world.held.refresh_from_db()
        assert world.held.status == EscalationStatus.PENDING

    def decide(client, auth):
        url = f"/api/v1/escalations/{pk}/decide"
        return client.post(url, {"decision": "reject"}, content_type="application/json", **auth)

    assert seen(client, world, "/api/v1/escalations", "id", pk) == {
        p: (200, p in {"reviewer", "admin"}) for p in PERSONAS
    } | {"anonymous": (401, False)}
    got = table(client, world, decide, unchanged, last=("admin", "reviewer"))
    assert got == NOBODY_ELSE | {"admin": 200, "reviewer": 409}


def test_tools(client, world, governed):
    url = f"/api/v1/tools/{governed.tool.pk}"
    users = {"admin": 200, "member": 200, "integration": 200}

    assert table(client, world, lambda c, auth: c.get(url, **auth)) == NOBODY_ELSE | users

    def unchanged():
        governed.tool.refresh_from_db()
        assert governed.tool.description != "changed"

    def change(client, auth):
        body = {"description": "changed"}
        return client.patch(url, body, content_type="application/json", **auth)

    # Who may use it but lacks tools.change_tool is refused (403); who may not see it, 404.
    got = table(client, world, change, unchanged, last=("admin",))
    assert got == NOBODY_ELSE | {"admin": 200, "member": 403, "integration": 403}


def test_knowledge_bases_and_documents(client, world, governed):
    base = governed.knowledge_base
    readers = {"admin": 200, "member": 200, "integration": 200}

    assert seen(client, world, "/api/v1/knowledge-bases", "slug", base.slug) == {
        p: (200, p in readers) for p in PERSONAS
    } | {"anonymous": (401, False)}
    for url in (
        f"/api/v1/knowledge-bases/{base.slug}/documents",
        f"/api/v1/documents/{world.document.pk}",
    ):
        assert (
            table(client, world, lambda c, auth, url=url: c.get(url, **auth))
            == NOBODY_ELSE | readers
        )


def test_uploading_a_document(client, world, governed):
    url = f"/api/v1/knowledge-bases/{governed.knowledge_base.slug}/documents"
    before = Document.objects.count()

    def upload(client, auth):
        file = SimpleUploadedFile("notes.txt", b"Leave is 25 days.", content_type="text/plain")
        return client.post(url, {"file": file}, **auth)

    def unchanged():
        assert Document.objects.count() == before

    # Readers who do not own the base (nor hold change_knowledgebase) are refused: 403.
    got = table(client, world, upload, unchanged, last=("admin",))
    assert got == NOBODY_ELSE | {"admin": 202, "member": 403, "integration": 403}


@pytest.mark.parametrize("url", ["/api/v1/audit/events", "/api/v1/audit/export"])
def test_the_audit_trail_is_for_auditors(client, world, url):
    got = table(client, world, lambda c, auth: c.get(url, **auth))

    assert got == {p: 403 for p in PERSONAS} | {"admin": 200, "anonymous": 401}


def test_the_openai_compatible_models(client, world, governed):
    def listed(name):
        response = client.get("/v1/models", **world.auth[name])
        ids = (
            [m["id"] for m in response.json().get("data", [])]
            if response.status_code == 200
            else []
        )
        return response.status_code, f"agent:{governed.agent.slug}" in ids

    assert {name: listed(name) for name in PERSONAS} == expect(
        admin=(200, True),
        reviewer=(200, False),
        member=(200, True),
        outsider=(200, False),
        denied=(200, False),
        integration=(200, True),
        anonymous=(401, False),
    )


def test_the_openai_compatible_completion(client, world, governed, settings):
    settings.WARDEN_OPENAI_WAIT_SECONDS = 1  # no worker here: a run starts, and is still going
    before = Run.objects.count()

    def complete(client, auth):
        body = {
            "model": f"agent:{governed.agent.slug}",
            "messages": [{"role": "user", "content": "hi"}],
        }
        return client.post("/v1/chat/completions", body, content_type="application/json", **auth)

    def unchanged():
        assert Run.objects.count() == before

    got = table(client, world, complete, unchanged, last=("admin", "member", "integration"))

    assert got == expect(
        admin=409,  # run-pending: run_in_progress
        reviewer=404,
        member=409,
        outsider=404,
        denied=404,
        integration=409,
        anonymous=401,
    )
    assert Run.objects.count() == before + 3  # one run for each who may
