"""One access rule on every surface that shows what a run made of a knowledge base (issue 19,
points 1 and 2): the inbox's pages, held answers, the escalations API and the admin console
show a reviewer or an admin nothing drawn from a base they may not read, denials winning over
superuser status, as the run trace and the API already did. Real runs, real PostgreSQL."""

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from agents.knowledge.services import document_add, document_ingest
from agents.models import Agent, Conversation, Deployment, Document, KnowledgeBase, ModelRoute, Run
from agents.orchestrator import run_execute
from agents.selectors import HIDDEN
from agents.services import run_start
from audit.services import SYSTEM
from governance.models import Action, ApprovalRequest, Escalation
from governance.services import access_deny, access_grant
from tests.model_server import Reply
from tools.models import Tool

pytestmark = pytest.mark.django_db

SECRET = "purple-otter-quince"  # nothing personal-data detection would hash
VAULT = f"# Vault procedures\n\nThe vault passphrase is {SECRET}, changed each spring."
FILENAME = "vault-procedures.md"


def own_base(agent, owner) -> tuple[KnowledgeBase, Document]:
    """A base `owner` owns (and so may read), the agent's only one, with one document."""
    base = KnowledgeBase.objects.create(
        name="Member notes", slug=f"mn-{uuid.uuid4().hex[:6]}", owner=owner
    )
    document, _ = document_add(
        knowledge_base=base, actor=SYSTEM, name=FILENAME, data=VAULT.encode(), enqueue=False
    )
    document_ingest(document_id=document.pk)
    agent.knowledge_bases.add(base)
    return base, Document.objects.get(pk=document.pk)


def ask(conversation, text) -> Run:
    run = run_start(
        agent=conversation.agent, conversation=conversation, actor=conversation.owner, input=text
    )
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


@pytest.fixture
def quoted(server, help_desk, people):
    """Member A asked about a document in A's own base, the answer quoted it; A then asked
    for a ticket in the same conversation, which waits for a reviewer."""
    base, document = own_base(help_desk, people.member)
    server.script(
        "primary",
        Reply.say(f"The vault passphrase is {SECRET} [1]."),
        Reply.call("create_ticket", {"title": "Rotate the vault passphrase"}),
        Reply.say("Ticket opened."),
    )
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    first = ask(conversation, "what is the vault passphrase?")
    second = ask(conversation, "open a ticket to rotate it")
    assert (first.state, second.state) == ("succeeded", "awaiting_approval")
    assert SECRET in first.answer
    return base, document, first, ApprovalRequest.objects.get(run_id=second.pk)


# Point 1: the reviewer.


def test_the_approval_page_hides_an_earlier_answer_drawn_from_a_base_the_reviewer_may_not_read(
    client, people, quoted
):
    base, _, _, request = quoted
    client.force_login(people.reviewer)

    page = client.get(f"/inbox/approvals/{request.pk}/").content.decode()

    assert SECRET not in page
    assert "Vault procedures" not in page  # nor the passage's title, in where the call came from
    assert f"<em data-hidden>{HIDDEN}</em>" in page  # the earlier answer, in the conversation
    # What the decision needs: the call, its exact arguments, the questions asked.
    assert "Run create_ticket" in page
    assert "&quot;title&quot;: &quot;Rotate the vault passphrase&quot;" in page
    assert "what is the vault passphrase?" in page
    assert "open a ticket to rotate it" in page

    access_grant(obj=base, holder=people.reviewer, action=Action.READ, actor=SYSTEM)
    assert SECRET in client.get(f"/inbox/approvals/{request.pk}/").content.decode()


@pytest.fixture
def held(server, people, team):
    """A's question answered by the offline model from A's own base, held for review."""
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(
        name="Notes", slug=f"n-{uuid.uuid4().hex[:6]}", route=route, confidence_threshold=1
    )
    for obj in (agent, route):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
    base, _ = own_base(agent, people.member)
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    run = ask(conversation, "what is the vault passphrase?")
    assert run.state == "awaiting_review"
    escalation = Escalation.objects.get(run_id=run.pk)
    assert SECRET in escalation.answer
    return base, escalation


def test_a_held_answer_drawn_from_a_base_the_reviewer_may_not_read_is_hidden_and_not_released(
    client, people, held
):
    base, escalation = held
    client.force_login(people.reviewer)
    url = f"/inbox/answers/{escalation.pk}/"

    page = client.get(url).content.decode()
    released = client.post(url, {"decision": "release", "answer": "", "comment": ""}, follow=True)

    assert SECRET not in page
    assert "Vault procedures" not in page  # the citation's title
    assert HIDDEN in page
    assert "what is the vault passphrase?" in page  # the question
    assert 'value="release"' not in page
    assert 'value="reject"' in page
    assert "You may not read a knowledge base this answer draws on" in released.content.decode()
    assert SECRET not in released.content.decode()
    escalation.refresh_from_db()
    assert (escalation.status, escalation.released_answer) == ("pending", "")

    access_grant(obj=base, holder=people.reviewer, action=Action.READ, actor=SYSTEM)
    page = client.get(url).content.decode()
    assert SECRET in page
    assert 'value="release"' in page


def test_the_escalations_api_hides_the_answer_and_its_citations_and_refuses_a_blind_release(
    client, people, held
):
    _, escalation = held
    client.force_login(people.reviewer)

    listed = client.get("/api/v1/escalations")
    release = client.post(
        f"/api/v1/escalations/{escalation.pk}/decide",
        {"decision": "release"},
        content_type="application/json",
    )

    assert listed.status_code == 200
    assert SECRET not in listed.content.decode()
    assert "Vault procedures" not in listed.content.decode()
    item = next(i for i in listed.json()["results"] if i["id"] == escalation.pk)
    assert (item["answer"], item["citations"], item["hidden"]) == (HIDDEN, [], True)
    assert item["question"] == "what is the vault passphrase?"
    assert release.status_code == 403
    assert SECRET not in release.content.decode()
    escalation.refresh_from_db()
    assert escalation.status == "pending"

    rejected = client.post(
        f"/api/v1/escalations/{escalation.pk}/decide",
        {"decision": "reject"},
        content_type="application/json",
    )
    assert rejected.status_code == 200
    assert (rejected.json()["status"], rejected.json()["answer"]) == ("rejected", HIDDEN)
    assert SECRET not in rejected.content.decode()


def test_the_escalations_api_shows_the_answer_to_a_reviewer_who_may_read_its_base(
    client, people, held
):
    base, escalation = held
    access_grant(obj=base, holder=people.reviewer, action=Action.READ, actor=SYSTEM)
    client.force_login(people.reviewer)

    item = next(
        i for i in client.get("/api/v1/escalations").json()["results"] if i["id"] == escalation.pk
    )

    assert SECRET in item["answer"]
    assert item["hidden"] is False
    assert [c["title"] for c in item["citations"]] == ["Vault procedures"]


# Point 2: a denial on a superuser, in the admin console.


def deny_admin(people, base) -> None:
    access_deny(obj=base, holder=people.admin, action=Action.READ, actor=SYSTEM)


def test_the_run_page_hides_what_the_run_drew_from_a_base_the_superuser_is_denied(
    client, people, quoted
):
    base, _, first, _ = quoted
    client.force_login(people.admin)
    url = f"/admin/agents/run/{first.pk}/change/"
    assert SECRET in client.get(url).content.decode()  # before the denial

    deny_admin(people, base)
    response = client.get(url)

    page = response.content.decode()
    assert response.status_code == 200
    assert SECRET not in page
    assert "Vault procedures" not in page
    assert HIDDEN in page
    assert "what is the vault passphrase?" in page  # the question is the member's, not the base's


def test_the_document_and_base_pages_are_gone_for_a_superuser_denied_the_base(
    client, people, quoted
):
    base, document, _, _ = quoted
    client.force_login(people.admin)
    pages = [
        f"/admin/agents/document/{document.pk}/change/",
        f"/admin/agents/knowledgebase/{base.pk}/change/",
        "/admin/agents/document/",
        "/admin/agents/knowledgebase/",
    ]
    before = [client.get(url, follow=True).content.decode() for url in pages]
    assert FILENAME in before[0]
    assert "Vault procedures" in before[2]
    assert "Vault procedures" in before[1]
    assert "Member notes" in before[3]

    deny_admin(people, base)

    # The object pages answer as for objects that do not exist: back to the index (whose side
    # panel shows the audit trail, target labels included, to whoever may read the trail).
    for url in pages[:2]:
        assert client.get(url).url == "/admin/", url
    for url in pages[2:]:
        page = client.get(url, follow=True).content.decode()
        assert FILENAME not in page, url
        assert "Vault procedures" not in page, url
        assert SECRET not in page, url
    assert "Member notes" not in client.get("/admin/agents/knowledgebase/").content.decode()
    access = f"/admin/agents/knowledgebase/{base.pk}/access/"
    assert client.get(access).url == "/admin/"  # as for a base that does not exist


def test_add_documents_on_a_base_the_superuser_is_denied_is_a_404_and_adds_nothing(
    client, people, quoted, django_capture_on_commit_callbacks
):
    base, _, _, _ = quoted
    client.force_login(people.admin)
    url = f"/admin/agents/knowledgebase/{base.pk}/add-documents/"
    assert client.get(url).status_code == 200  # before the denial
    deny_admin(people, base)

    shown = client.get(url)
    with django_capture_on_commit_callbacks() as enqueued:
        posted = client.post(
            url,
            {
                "files": [SimpleUploadedFile("more.md", b"# More\n\nAnother secret.")],
                "urls": "https://docs.example.com/more.html\n",
            },
        )

    assert (shown.status_code, posted.status_code) == (404, 404)
    assert "Member notes" not in shown.content.decode()
    assert list(
        Document.objects.filter(knowledge_base=base).values_list("filename", flat=True)
    ) == [FILENAME]
    assert enqueued == []


def test_the_held_answer_admin_page_hides_an_answer_from_a_base_the_superuser_is_denied(
    client, people, held
):
    base, escalation = held
    client.force_login(people.admin)
    url = f"/admin/governance/escalation/{escalation.pk}/change/"
    assert SECRET in client.get(url).content.decode()  # before the denial
    deny_admin(people, base)

    page = client.get(url).content.decode()
    released = client.post(
        "/admin/governance/escalation/",
        {"action": "release", "_selected_action": [escalation.pk]},
        follow=True,
    )

    assert SECRET not in page
    assert HIDDEN in page
    assert "you may not read a knowledge base this answer draws on" in released.content.decode()
    escalation.refresh_from_db()
    assert escalation.status == "pending"


def test_a_tool_output_from_knowledge_search_is_hidden_on_the_approval_page(
    client, server, help_desk, people
):
    search = Tool.objects.get(name="knowledge_search")
    search.enabled = True
    search.save(update_fields=["enabled"])
    help_desk.tools.add(search)
    access_grant(obj=search, holder=people.member, action=Action.USE, actor=SYSTEM)
    base, _ = own_base(help_desk, people.member)
    server.script(
        "primary",
        Reply.call("knowledge_search", {"query": "vault passphrase"}),
        Reply.call("create_ticket", {"title": "Rotate it"}),
        Reply.say("Done."),
    )
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    run = ask(conversation, "look up the vault passphrase and open a ticket")
    request = ApprovalRequest.objects.get(run_id=run.pk)
    client.force_login(people.reviewer)

    page = client.get(f"/inbox/approvals/{request.pk}/").content.decode()

    assert "Where the call came from" in page
    assert SECRET not in page
    assert "<strong>a tool's output</strong>" in page

    access_grant(obj=base, holder=people.reviewer, action=Action.READ, actor=SYSTEM)
    assert SECRET in client.get(f"/inbox/approvals/{request.pk}/").content.decode()


# The check underneath, on its own.


def test_unreadable_sources_follows_the_one_rule(people, team, help_desk):
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from agents.models import RunStep
    from agents.selectors import unreadable_sources

    base, document = own_base(help_desk, people.member)
    gone = KnowledgeBase.objects.create(
        name="Gone", slug=f"g-{uuid.uuid4().hex[:6]}", owner=people.admin
    )
    now = timezone.now()

    def run_with(kind, output, conversation=None) -> Run:
        conversation = conversation or Conversation.objects.create(
            owner=people.member, agent=help_desk
        )
        run = Run.objects.create(
            agent=help_desk, conversation=conversation, actor=people.member, input="q"
        )
        RunStep.objects.create(
            run=run, index=0, kind=kind, output=output, started_at=now, finished_at=now
        )
        return run

    plain = run_with("tool", {"result": {"status": "open"}})
    # A later run does not hide an earlier one of its conversation...
    retrieved = run_with(
        "retrieval", {"passages": [{"n": 1, "knowledge_base": base.pk}]}, plain.conversation
    )
    # ...but an earlier one hides the later: their model had its passages in the prompt.
    later = run_with("tool", {"result": {"status": "open"}}, retrieved.conversation)
    searched = run_with("tool", {"result": {"passages": [{"document": document.pk}]}})
    deleted = run_with("retrieval", {"passages": [{"n": 1, "knowledge_base": gone.pk}]})
    gone.delete()
    lost = run_with("tool", {"result": {"passages": [{"document": 10**9}]}})
    after_lost = run_with("tool", {"result": {"status": "open"}}, lost.conversation)
    runs = {r.pk for r in (plain, retrieved, later, searched, deleted, lost, after_lost)}
    everything_but_plain = runs - {plain.pk}

    def hidden(user) -> set[int]:
        return unreadable_sources(user, runs)[0]

    gone_too = {deleted.pk, lost.pk, after_lost.pk}
    assert hidden(people.member) == gone_too  # the owner reads their own base
    assert hidden(people.admin) == gone_too  # a superuser reads every base
    assert hidden(people.reviewer) == everything_but_plain
    readers = Group.objects.create(name=f"readers {uuid.uuid4().hex[:4]}")
    people.reviewer.groups.add(readers)
    access_grant(obj=base, holder=readers, action=Action.READ, actor=SYSTEM)
    assert hidden(people.reviewer) == gone_too
    access_deny(obj=base, holder=people.admin, action=Action.READ, actor=SYSTEM)
    assert hidden(people.admin) == everything_but_plain  # a denial wins over superuser status
    access_deny(obj=base, holder=readers, action=Action.READ, actor=SYSTEM)
    assert hidden(people.reviewer) == everything_but_plain  # a group's denial over its grant
    people.member.is_active = False
    assert hidden(people.member) == everything_but_plain
    assert unreadable_sources(people.anonymous, runs)[0] == everything_but_plain


def test_the_escalations_list_asks_the_same_number_of_queries_for_one_or_many(
    client, people, help_desk
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from agents.models import RunStep

    base, document = own_base(help_desk, people.member)
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)

    def hold() -> None:
        run = Run.objects.create(
            agent=help_desk, conversation=conversation, actor=people.member, input="q"
        )
        now = timezone.now()
        for index, kind, output in [
            (0, "retrieval", {"passages": [{"n": 1, "knowledge_base": base.pk}]}),
            (1, "tool", {"result": {"passages": [{"document": document.pk}]}}),
        ]:
            RunStep.objects.create(
                run=run, index=index, kind=kind, output=output, started_at=now, finished_at=now
            )
        Escalation.objects.create(
            run_id=run.pk,
            agent_id=help_desk.pk,
            requested_by=people.member,
            question="q",
            answer=SECRET,
            threshold="0.80",
        )

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            listed = client.get("/api/v1/escalations")
        assert listed.status_code == 200
        assert SECRET not in listed.content.decode()
        return len(captured)

    client.force_login(people.reviewer)
    hold()
    one = queries()
    for _ in range(3):
        hold()

    assert queries() == one
    assert len(client.get("/api/v1/escalations").json()["results"]) == 4


# E-mails and webhooks: they name the run and the call, never what the run read or answered,
# so the reviewer who gets one and the application that hears of a run learn nothing of a base
# through them (the inbox and the API, behind the rule, show the rest).


def test_the_approval_email_and_the_runs_webhook_carry_nothing_from_the_base(
    people, quoted, mailoutbox
):
    from oauth2_provider.models import Application

    from governance.tasks import approval_notify_task
    from integrations.models import WebhookDelivery
    from integrations.webhooks import webhook_create, webhook_run_state_changed

    _, _, first, request = quoted
    approval_notify_task(request.pk)
    application = Application.objects.create(
        name="ERP",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        user=people.member,
    )
    webhook_create(application=application, url="https://hooks.example.com/warden", actor=SYSTEM)
    Run.objects.filter(pk=first.pk).update(client_application_id=application.pk)
    webhook_run_state_changed(first.pk, "succeeded")

    [mail] = mailoutbox
    [delivery] = WebhookDelivery.objects.filter(run_id=first.pk)
    assert people.reviewer.email in mail.to
    assert "create_ticket" in mail.subject
    for text in (mail.subject, mail.body, delivery.body):
        assert SECRET not in text
        assert "Vault procedures" not in text
        assert FILENAME not in text
        assert (
            "vault passphrase" not in text
        )  # nor the questions and arguments (the inbox has them)
    assert f'"id":{first.pk}' in delivery.body
