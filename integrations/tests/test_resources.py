"""API v1's resources: conversations, approvals and held answers, tools, knowledge bases and
documents, the audit trail. Each goes through the governance check the browser uses: the
allowed persona gets exact data, anyone else a 404 (missing and forbidden alike) and, for a
write, nothing changes; a token without the scope gets 403, no credentials 401."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents.knowledge.models import Document
from agents.models import Conversation, Message, Run
from audit.models import AuditEvent
from governance.models import ApprovalRequest, Escalation
from tests.access import grant
from tests.personas import parked
from tools.models import Tool

pytestmark = pytest.mark.django_db


def problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"/api/problems/{slug}"
    return body


def queries(client, url: str, **headers) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, **headers).status_code == 200
    return len(captured)


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))


# --- conversations ----------------------------------------------------------------------------


def _conversation(user, agent, title="VPN") -> Conversation:
    conversation = Conversation.objects.create(owner=user, agent=agent, title=title)
    run = Run.objects.create(
        agent=agent, conversation=conversation, actor=user, input="hi", state="succeeded"
    )
    for role, content in (("user", "hi"), ("tool", "{}"), ("assistant", "hello")):
        Message.objects.create(conversation=conversation, run=run, role=role, content=content)
    return conversation


def test_conversations_are_the_callers_own(client, people, governed, bearer):
    mine = _conversation(people.integration, governed.agent)
    theirs = _conversation(people.member, governed.agent)
    reader = bearer(people.integration, "runs:read")

    listed = client.get("/api/v1/conversations", **reader)
    one = client.get(f"/api/v1/conversations/{mine.pk}", **reader)
    other = client.get(f"/api/v1/conversations/{theirs.pk}", **reader)
    missing = client.get(f"/api/v1/conversations/{theirs.pk + 1000}", **reader)

    assert [(c["id"], c["agent"], c["title"]) for c in listed.json()["results"]] == [
        (mine.pk, governed.agent.slug, "VPN")
    ]
    body = one.json()
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "hi"),
        ("assistant", "hello"),
    ]  # the tool's message is the run's business, not the conversation's
    assert [(r["id"], r["state"]) for r in body["runs"]] == [(mine.runs.get().pk, "succeeded")]
    problem(other, 404, "not-found")
    assert other.json() | {"instance": None} == missing.json() | {"instance": None}


def test_conversations_need_the_scope_and_credentials(client, people, governed, bearer):
    mine = _conversation(people.integration, governed.agent)
    runner = bearer(people.integration, "agents:run")

    assert problem(client.get("/api/v1/conversations", **runner), 403, "forbidden")["detail"] == (
        "the token lacks the scope 'runs:read'"
    )
    problem(client.get(f"/api/v1/conversations/{mine.pk}", **runner), 403, "forbidden")
    problem(client.get("/api/v1/conversations"), 401, "not-authenticated")
    problem(client.get(f"/api/v1/conversations/{mine.pk}"), 401, "not-authenticated")


def test_the_conversation_list_costs_the_same_for_more_rows(client, people, governed):
    client.force_login(people.member)
    _conversation(people.member, governed.agent)
    one = queries(client, "/api/v1/conversations")
    for _ in range(4):
        _conversation(people.member, governed.agent)

    assert queries(client, "/api/v1/conversations") == one
    assert len(client.get("/api/v1/conversations").json()["results"]) == 5


# --- approvals --------------------------------------------------------------------------------


@pytest.fixture
def waiting(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    return ApprovalRequest.objects.get(run_id=run.pk)


def test_a_reviewer_lists_the_approvals_they_may_decide(client, people, waiting, bearer):
    reviewer = bearer(people.reviewer, "approvals:write")

    listed = client.get("/api/v1/approvals", **reviewer).json()["results"]

    assert len(listed) == 1
    item = listed[0]
    assert (item["id"], item["run"], item["tool"], item["arguments"], item["status"]) == (
        waiting.pk,
        waiting.run_id,
        "create_ticket",
        {"title": "VPN down"},
        "pending",
    )
    assert item["requested_by"] == people.member.username
    assert item["reasons"] == ["the tool changes a system (risk: write)"]
    for who in (people.member, people.outsider):  # the requester (four-eyes), a stranger
        client.force_login(who)
        assert client.get("/api/v1/approvals").json()["results"] == []
        problem(client.get(f"/api/v1/approvals/{waiting.pk}"), 404, "not-found")


def test_approving_with_edited_arguments_requeues_the_run_once(client, people, waiting, bearer):
    reviewer = bearer(people.reviewer, "approvals:write")
    url = f"/api/v1/approvals/{waiting.pk}/decide"
    body = {"decision": "approve", "arguments": {"title": "VPN down (edited)"}, "comment": "ok"}

    decided = client.post(url, body, content_type="application/json", **reviewer)
    before = actions()
    again = client.post(url, {"decision": "reject"}, content_type="application/json", **reviewer)

    assert decided.status_code == 200, decided.content
    assert (decided.json()["status"], decided.json()["approved_arguments"]) == (
        "approved",
        {"title": "VPN down (edited)"},
    )
    assert decided.json()["decided_by"] == people.reviewer.username
    waiting.refresh_from_db()
    assert (waiting.status, waiting.approved_arguments, waiting.comment) == (
        "approved",
        {"title": "VPN down (edited)"},
        "ok",
    )
    assert Run.objects.get(pk=waiting.run_id).state == "queued"
    event = AuditEvent.objects.get(action="approval.approved", run=str(waiting.run_id))
    assert event.actor_id == str(people.reviewer.pk)
    assert problem(again, 409, "conflict")["detail"] == (
        f"already approved by {people.reviewer.username}"
    )
    assert actions() == before
    waiting.refresh_from_db()
    assert waiting.status == "approved"


def test_deciding_an_expired_request_is_a_conflict(client, people, waiting):
    from django.utils import timezone

    ApprovalRequest.objects.filter(pk=waiting.pk).update(expires_at=timezone.now())
    client.force_login(people.reviewer)

    response = client.post(
        f"/api/v1/approvals/{waiting.pk}/decide",
        {"decision": "approve"},
        content_type="application/json",
    )

    assert problem(response, 409, "conflict")["detail"] == (
        "this request expired before the decision; the run was told"
    )
    waiting.refresh_from_db()
    assert (waiting.status, waiting.decided_by) == ("expired", None)
    assert "approval.approved" not in actions()


def test_who_may_not_review_cannot_decide(client, people, waiting, bearer):
    url = f"/api/v1/approvals/{waiting.pk}/decide"
    before = actions()
    for who in (people.member, people.outsider, people.integration):
        client.force_login(who)
        refused = client.post(url, {"decision": "approve"}, content_type="application/json")
        problem(refused, 404, "not-found")
    client.logout()
    problem(
        client.post(url, {"decision": "approve"}, content_type="application/json"),
        401,
        "not-authenticated",
    )
    reader = bearer(people.reviewer, "runs:read")  # a reviewer's token without the scope
    problem(
        client.post(url, {"decision": "approve"}, content_type="application/json", **reader),
        403,
        "forbidden",
    )
    waiting.refresh_from_db()
    assert (waiting.status, waiting.decided_by) == ("pending", None)
    assert Run.objects.get(pk=waiting.run_id).state == "awaiting_approval"
    assert actions() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "maybe"}, "decision"),
        ({}, "decision"),
        ({"decision": "approve", "arguments": [1]}, "arguments"),
        ({"decision": "approve", "arguments": {"title": 42}}, "arguments"),  # not the schema
        ({"decision": "approve", "arguments": {"title": "a\u0000b"}}, "arguments"),
        ({"decision": "reject", "comment": "a\u0000b"}, "comment"),
        (
            {
                "decision": "approve",
                "arguments": {
                    "title": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
                },
            },
            "arguments",
        ),
    ],
)
def test_a_malformed_decision_is_a_400_and_decides_nothing(client, people, waiting, body, field):
    client.force_login(people.reviewer)
    before = actions()

    response = client.post(
        f"/api/v1/approvals/{waiting.pk}/decide", body, content_type="application/json"
    )

    assert list(problem(response, 400, "invalid")["errors"]) == [field]
    waiting.refresh_from_db()
    assert waiting.status == "pending"
    assert actions() == before


@pytest.mark.parametrize("body", ["{nope", '{"decision": ' + "[" * 100_000 + "]" * 100_000 + "}"])
def test_a_body_that_is_not_json_is_a_400(client, people, waiting, body):
    client.force_login(people.reviewer)
    response = client.post(
        f"/api/v1/approvals/{waiting.pk}/decide", body, content_type="application/json"
    )
    problem(response, 400, "malformed")
    waiting.refresh_from_db()
    assert waiting.status == "pending"


def test_the_approval_list_costs_the_same_for_more_rows(client, people, waiting):
    client.force_login(people.reviewer)
    one = queries(client, "/api/v1/approvals")
    for n in range(3):
        copy = ApprovalRequest.objects.get(pk=waiting.pk)
        copy.pk, copy.key = None, f"{waiting.key}:copy{n}"
        copy.save()

    assert queries(client, "/api/v1/approvals") == one
    assert len(client.get("/api/v1/approvals").json()["results"]) == 4


def _held(people, agent) -> Escalation:
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    run = Run.objects.create(
        agent=agent, conversation=conversation, actor=people.member, input="leave?"
    )
    run.state = "awaiting_review"
    run.save(update_fields=["state"])
    return Escalation.objects.create(
        run_id=run.pk,
        agent_id=agent.pk,
        requested_by=people.member,
        question="leave?",
        answer="Maybe 25 days.",
        confidence="0.400",
        threshold="0.80",
    )


def test_a_held_answer_is_released_once_by_a_reviewer(client, people, governed, bearer):
    held = _held(people, governed.agent)
    reviewer = bearer(people.reviewer, "approvals:write")
    url = f"/api/v1/escalations/{held.pk}/decide"
    client.force_login(people.outsider)
    outsider = client.post(url, {"decision": "release"}, content_type="application/json")
    client.logout()

    listed = client.get("/api/v1/escalations", **reviewer).json()["results"]
    released = client.post(
        url,
        {"decision": "release", "answer": "25 days."},
        content_type="application/json",
        **reviewer,
    )
    again = client.post(url, {"decision": "reject"}, content_type="application/json", **reviewer)

    problem(outsider, 404, "not-found")
    assert [(e["id"], e["answer"], e["confidence"]) for e in listed] == [
        (held.pk, "Maybe 25 days.", "0.400")
    ]
    assert released.status_code == 200, released.content
    assert (released.json()["status"], released.json()["released_answer"]) == (
        "released",
        "25 days.",
    )
    problem(again, 409, "conflict")
    held.refresh_from_db()
    assert (held.status, held.released_answer) == ("released", "25 days.")
    assert actions().count("escalation.released") == 1


# --- tools ------------------------------------------------------------------------------------

HTTP_TOOL = {
    "name": "crm_lookup",
    "description": "Look a customer up in the CRM.",
    "kind": "http",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    "config": {"method": "GET", "url": "https://crm.example.com/search", "query": ["q"]},
    "risk": "read",
}


def test_tools_are_those_the_caller_may_use(client, people, governed, bearer):
    other = Tool.objects.exclude(pk=governed.tool.pk).first()
    reader = bearer(people.integration, "admin:read")

    listed = client.get("/api/v1/tools", **reader).json()["results"]
    one = client.get(f"/api/v1/tools/{governed.tool.pk}", **reader).json()

    assert [t["name"] for t in listed] == ["create_ticket"]
    assert (one["name"], one["kind"], one["risk"], one["requires_approval"]) == (
        "create_ticket",
        "python",
        "write",
        True,
    )
    assert one["version"] == governed.tool.version
    assert "config" not in one  # the admin's to read
    problem(client.get(f"/api/v1/tools/{other.pk}", **reader), 404, "not-found")
    client.force_login(people.denied)
    assert client.get("/api/v1/tools").json()["results"] == []
    problem(client.get(f"/api/v1/tools/{governed.tool.pk}"), 404, "not-found")
    client.logout()
    problem(client.get("/api/v1/tools"), 401, "not-authenticated")
    runner = bearer(people.integration, "agents:run")
    assert problem(client.get("/api/v1/tools", **runner), 403, "forbidden")["detail"] == (
        "the token lacks the scope 'admin:read'"
    )


def test_an_admin_registers_a_tool_checked_and_audited(client, people, governed, bearer):
    client.force_login(people.admin)

    created = client.post("/api/v1/tools", HTTP_TOOL, content_type="application/json")

    assert created.status_code == 201, created.content
    tool = Tool.objects.get(name="crm_lookup")
    assert created["Location"] == f"/api/v1/tools/{tool.pk}"
    assert (tool.kind, tool.config, tool.enabled) == ("http", HTTP_TOOL["config"], False)
    assert created.json()["version"] == tool.version
    event = AuditEvent.objects.get(action="tool.created")
    assert (event.actor_id, event.target_id) == (str(people.admin.pk), str(tool.pk))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"parameters": {"type": "array"}}, "parameters"),  # tools take named arguments
        ({"parameters": {"type": "object", "properties": {"q": {"type": 7}}}}, "parameters"),
        ({"config": {"method": "GET"}}, "config"),  # no URL
        ({"config": {"method": "GET", "url": "https://x.example/{missing}"}}, "config"),
        ({"name": "two words"}, "name"),
        ({"name": "create_ticket"}, "name"),  # taken
        ({"kind": "mcp"}, "mcp_server"),  # an MCP tool comes from its server
        ({"parameters": {"type": "object", "description": "a\u0000"}}, "parameters"),
        (
            {
                "parameters": {
                    "type": "object",
                    "not": json.loads('{"not": ' * 40 + "{}" + "}" * 40),
                }
            },
            "parameters",
        ),
    ],
)
def test_an_invalid_tool_is_a_400_and_nothing_is_saved(client, people, governed, change, field):
    client.force_login(people.admin)
    count, before = Tool.objects.count(), actions()

    response = client.post("/api/v1/tools", HTTP_TOOL | change, content_type="application/json")

    assert field in problem(response, 400, "invalid")["errors"]
    assert (Tool.objects.count(), actions()) == (count, before)


def test_writing_tools_needs_the_model_permission_and_the_scope(client, people, governed, bearer):
    count, before = Tool.objects.count(), actions()
    client.force_login(people.member)  # may use create_ticket, may not change the registry
    refused = client.post("/api/v1/tools", HTTP_TOOL, content_type="application/json")
    patched = client.patch(
        f"/api/v1/tools/{governed.tool.pk}", {"risk": "read"}, content_type="application/json"
    )
    client.logout()
    people.integration.user_permissions.add(Permission.objects.get(codename="add_tool"))
    runner = bearer(people.integration, "agents:run")
    scoped = client.post("/api/v1/tools", HTTP_TOOL, content_type="application/json", **runner)

    assert problem(refused, 403, "forbidden")["detail"] == (
        "the account lacks the permission 'tools.add_tool'"
    )
    problem(patched, 403, "forbidden")
    problem(scoped, 403, "forbidden")
    assert (Tool.objects.count(), actions()) == (count, before)
    assert Tool.objects.get(pk=governed.tool.pk).risk == "write"
    reader = bearer(people.integration, "admin:read")  # reading scope, the permission
    read_only = client.post("/api/v1/tools", HTTP_TOOL, content_type="application/json", **reader)
    assert problem(read_only, 403, "forbidden")["detail"] == (
        "the token lacks the scope 'admin:write'"
    )
    assert Tool.objects.count() == count
    writer = bearer(people.integration, "admin:write")  # with the scope and the permission
    made = client.post("/api/v1/tools", HTTP_TOOL, content_type="application/json", **writer)
    assert made.status_code == 201, made.content


def test_an_admin_changes_a_tool_and_the_change_is_audited(client, people, governed):
    client.force_login(people.admin)
    version = governed.tool.version
    url = f"/api/v1/tools/{governed.tool.pk}"

    changed = client.patch(url, {"risk": "critical", "timeout": 5}, content_type="application/json")
    fixed = client.patch(url, {"parameters": {"type": "object"}}, content_type="application/json")
    put = client.put(url, HTTP_TOOL, content_type="application/json")

    assert changed.status_code == 200, changed.content
    tool = Tool.objects.get(pk=governed.tool.pk)
    assert (tool.risk, tool.timeout, changed.json()["requires_approval"]) == ("critical", 5, True)
    event = AuditEvent.objects.get(action="tool.changed")
    assert json.loads(event.data) == {
        "tool": "create_ticket",
        "fields": ["risk", "timeout"],
        "from": version,
        "version": tool.version,
    }
    assert problem(fixed, 400, "invalid")["errors"] == {
        "parameters": ["a python tool's parameters cannot be changed here"]
    }
    problem(put, 405, "method-not-allowed")
    client.force_login(people.outsider)  # may not even see it
    hidden = client.patch(url, {"risk": "read"}, content_type="application/json")
    problem(hidden, 404, "not-found")
    assert Tool.objects.get(pk=governed.tool.pk).risk == "critical"


def test_the_tool_list_costs_the_same_for_more_rows(client, people, governed):
    client.force_login(people.member)
    one = queries(client, "/api/v1/tools")
    grant(people.member, *Tool.objects.exclude(pk=governed.tool.pk)[:3])

    assert queries(client, "/api/v1/tools") == one
    assert len(client.get("/api/v1/tools").json()["results"]) == 4


# --- knowledge bases and documents ------------------------------------------------------------


def _upload(client, base, name="prices.md", data=b"# Prices\nGold costs 10.", **headers):
    return client.post(
        f"/api/v1/knowledge-bases/{base.slug}/documents",
        {"file": SimpleUploadedFile(name, data, content_type="text/markdown")},
        **headers,
    )


def test_knowledge_bases_are_those_the_caller_may_read(client, people, governed, bearer):
    Document.objects.create(knowledge_base=governed.knowledge_base, source="upload", size=3)
    writer = bearer(people.integration, "knowledge:write")

    listed = client.get("/api/v1/knowledge-bases", **writer).json()["results"]

    assert [(b["slug"], b["documents"]) for b in listed] == [
        (
            governed.knowledge_base.slug,
            {"queued": 1, "processing": 0, "ready": 0, "failed": 0, "duplicate": 0},
        )
    ]
    client.force_login(people.denied)
    assert client.get("/api/v1/knowledge-bases").json()["results"] == []
    documents = f"/api/v1/knowledge-bases/{governed.knowledge_base.slug}/documents"
    problem(client.get(documents), 404, "not-found")
    client.logout()
    problem(client.get("/api/v1/knowledge-bases"), 401, "not-authenticated")
    runner = bearer(people.integration, "agents:run")
    problem(client.get("/api/v1/knowledge-bases", **runner), 403, "forbidden")


def test_an_upload_is_queued_and_its_status_readable(
    client, people, governed, bearer, django_capture_on_commit_callbacks
):
    base = governed.knowledge_base
    people.integration.user_permissions.add(Permission.objects.get(codename="change_knowledgebase"))
    writer = bearer(people.integration, "knowledge:write")

    with django_capture_on_commit_callbacks() as queued:
        accepted = _upload(client, base, **writer)
    again = _upload(client, base, name="copy.md", **writer)

    assert accepted.status_code == 202, accepted.content
    document = Document.objects.get(knowledge_base=base)
    assert accepted["Location"] == f"/api/v1/documents/{document.pk}"
    assert len(queued) == 1  # the ingestion task, after commit, as the admin's upload
    body = accepted.json()
    assert (body["id"], body["filename"], body["title"], body["status"], body["size"]) == (
        document.pk,
        "prices.md",
        "prices",
        "queued",
        23,
    )
    assert (again.status_code, again.json()["id"]) == (200, document.pk)  # the same content
    status = client.get(accepted["Location"], **writer).json()
    assert (status["id"], status["status"], status["knowledge_base"]) == (
        document.pk,
        "queued",
        base.slug,
    )
    listed = client.get(f"/api/v1/knowledge-bases/{base.slug}/documents", **writer).json()
    assert [d["id"] for d in listed["results"]] == [document.pk]
    event = AuditEvent.objects.get(action="knowledge.document_added")
    assert event.actor_id == str(people.integration.pk)
    client.force_login(people.outsider)
    problem(client.get(accepted["Location"]), 404, "not-found")


def test_who_may_not_manage_the_base_uploads_nothing(client, people, governed, bearer):
    base = governed.knowledge_base
    before = actions()
    reader = bearer(people.integration, "knowledge:write")  # reads it; neither owner nor admin
    client.force_login(people.outsider)  # may not read it
    hidden = _upload(client, base)
    client.logout()
    people.integration.user_permissions.add(Permission.objects.get(codename="change_knowledgebase"))
    scoped = _upload(client, base, **bearer(people.integration, "admin:read"))
    people.integration.user_permissions.clear()
    refused = _upload(client, base, **reader)

    problem(hidden, 404, "not-found")
    problem(scoped, 403, "forbidden")
    assert problem(refused, 403, "forbidden")["detail"] == (
        "the account may not add documents here"
    )
    problem(_upload(client, base), 401, "not-authenticated")
    assert not Document.objects.exists()
    assert actions() == before


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("tool.exe", b"MZ", "Warden reads .txt, .md, .markdown, .html, .htm, .pdf files"),
        ("empty.txt", b"", "The submitted file is empty."),
        ("big.txt", b"x" * 65, "the file is 65 bytes; the limit is 64 bytes"),
    ],
)
def test_an_unfit_upload_is_a_400(client, people, governed, settings, name, data, message):
    settings.WARDEN_KNOWLEDGE_MAX_BYTES = 64
    client.force_login(people.admin)

    response = _upload(client, governed.knowledge_base, name=name, data=data)

    assert problem(response, 400, "invalid")["errors"] == {"file": [message]}
    assert not Document.objects.exists()


def test_an_upload_must_be_multipart(client, people, governed):
    client.force_login(people.admin)
    url = f"/api/v1/knowledge-bases/{governed.knowledge_base.slug}/documents"

    as_json = client.post(url, {"file": "x"}, content_type="application/json")
    no_file = client.post(url, {})

    problem(as_json, 415, "unsupported-media-type")
    assert list(problem(no_file, 400, "invalid")["errors"]) == ["file"]
    assert not Document.objects.exists()


def test_the_document_lists_cost_the_same_for_more_rows(client, people, governed):
    client.force_login(people.member)
    base = governed.knowledge_base
    url = f"/api/v1/knowledge-bases/{base.slug}/documents"
    Document.objects.create(knowledge_base=base, source="upload", content_hash="0")
    one, bases = queries(client, url), queries(client, "/api/v1/knowledge-bases")
    for n in range(1, 4):
        Document.objects.create(knowledge_base=base, source="upload", content_hash=str(n))

    assert (queries(client, url), queries(client, "/api/v1/knowledge-bases")) == (one, bases)
    assert len(client.get(url).json()["results"]) == 4


# --- audit ------------------------------------------------------------------------------------


@pytest.fixture
def auditor(people):
    people.integration.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    return people.integration


def test_audit_events_are_read_in_chain_order_and_filtered(
    client, people, governed, auditor, bearer
):
    token = bearer(auditor, "audit:read")
    granted = list(AuditEvent.objects.filter(action="access.granted").order_by("sequence"))

    seen, url = [], "/api/v1/audit/events?action=access.granted&limit=2"
    while url:
        page = client.get(url, **token).json()
        seen, url = seen + page["results"], page["next"]

    assert seen == [e.as_chain_dict() for e in granted]
    assert len(granted) == 8  # the agent, tool, base and route, to the team and the integration
    prefix = client.get("/api/v1/audit/events?action=access.*", **token).json()["results"]
    assert {e["action"] for e in prefix} >= {"access.granted", "access.denied"}
    bad = client.get("/api/v1/audit/events?since=yesterday", **token)
    assert list(problem(bad, 400, "invalid")["errors"]) == ["since"]


def test_the_audit_trail_needs_the_permission_and_the_scope(client, people, governed, bearer):
    for url in ("/api/v1/audit/events", "/api/v1/audit/export"):
        client.force_login(people.reviewer)
        assert problem(client.get(url), 403, "forbidden")["detail"] == (
            "the account may not view the audit trail"
        )
        client.logout()
        problem(client.get(url), 401, "not-authenticated")
        problem(client.get(url, **bearer(people.admin, "admin:read")), 403, "forbidden")


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous")
def test_the_export_streams_json_lines_with_the_chain_fields(client, people, governed, bearer):
    token = bearer(people.admin, "audit:read")  # a governance admin holds every permission
    denied = AuditEvent.objects.filter(action="access.denied").order_by("sequence")

    response = client.get(
        "/api/v1/audit/export?action=access.denied", HTTP_ACCEPT="application/x-ndjson", **token
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    lines = b"".join(response).decode().splitlines()  # the ASGI path: the test below
    assert [json.loads(line) for line in lines] == [e.as_chain_dict() for e in denied]
    assert len(lines) == 4  # the agent, tool, base and route, for `denied`


def test_the_audit_list_costs_the_same_for_more_rows(client, people, governed, auditor):
    client.force_login(auditor)
    url = "/api/v1/audit/events?limit=3"
    one = queries(client, url)

    assert queries(client, "/api/v1/audit/events?limit=30") == one


@pytest.mark.usefixtures("committing_db")
def test_the_export_streams_over_asgi_in_one_snapshot(people, governed):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def download():
        client = AsyncClient()  # Django's ASGI handler, as under daphne
        await client.aforce_login(people.admin)
        response = await client.get("/api/v1/audit/export", {"action": "access.*"})
        return response, [chunk async for chunk in response.streaming_content]

    response, chunks = async_to_sync(download)()

    assert response.status_code == 200
    exported = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    expected = AuditEvent.objects.filter(action__startswith="access.").order_by("sequence")
    assert exported == [e.as_chain_dict() for e in expected]
    assert len(exported) == 12  # 8 grants and 4 denials
