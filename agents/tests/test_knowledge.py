"""Knowledge bases: ingestion, failures, permission filtering (search, retrieval step, tool),
citations, re-ingesting, embedding models, and the demo handbook. Real PostgreSQL with pgvector,
the real local embedder, real HTTP."""

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command

from agents.knowledge.admin import KnowledgeBaseForm
from agents.knowledge.retrieval import knowledge_search
from agents.knowledge.services import (
    document_add,
    document_add_url,
    document_ingest,
    knowledge_base_reembed,
)
from agents.models import (
    Agent,
    Chunk,
    Conversation,
    Deployment,
    Document,
    DocumentStatus,
    KnowledgeBase,
    ModelRoute,
    Run,
    RunState,
    RunStep,
)
from agents.orchestrator import run_execute
from agents.services import run_start
from agents.tests.pdf import pdf_with_text, pdf_without_text
from audit.services import SYSTEM
from governance.models import Action
from governance.services import access_grant
from tests.access import grant_agent
from tests.model_server import Reply
from tools.models import Tool

pytestmark = pytest.mark.django_db

LEAVE = b"""# Leave policy

## Annual leave

Full-time employees receive 25 days of paid annual leave per year.

## Sick leave

From the fourth day of illness you need a medical certificate.
"""
ENGINEERING = b"""# Deploy guide

Production deploys happen on Tuesdays after the change advisory board approves them.
"""


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice")


@pytest.fixture
def bob():
    return get_user_model().objects.create_user("bob")


def base(owner, slug=None, **fields) -> KnowledgeBase:
    slug = slug or f"kb-{uuid.uuid4().hex[:6]}"
    return KnowledgeBase.objects.create(name=slug, slug=slug, owner=owner, **fields)


def ingest(kb, name, data) -> Document:
    document, _created = document_add(
        knowledge_base=kb, actor=SYSTEM, name=name, data=data, enqueue=False
    )
    return document_ingest(document_id=document.pk)


# --- ingestion ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "title", "expected"),
    [
        (
            "notes.txt",
            b"Expense claims are due within 30 days.\n\nReceipts over 25 euros.",
            "notes",
            "30 days",
        ),
        ("leave.md", LEAVE, "Leave policy", "25 days of paid annual leave"),
        (
            "page.html",
            b"<html><head><title>Travel</title></head><body><nav>Home | About</nav><main>"
            b"<h1>Travel</h1><p>Hotels may cost up to 180 euros per night.</p></main>"
            b"<footer>Copyright</footer></body></html>",
            "Travel",
            "180 euros per night",
        ),
        (
            "guide.pdf",
            pdf_with_text(["Laptops are replaced every four years."]),
            "guide",
            "four years",
        ),
    ],
    ids=["txt", "md", "html", "pdf"],
)
def test_each_type_is_read_chunked_and_embedded(alice, name, data, title, expected):
    kb = base(alice)

    document = ingest(kb, name, data)

    assert (document.status, document.error, document.title) == (DocumentStatus.READY, "", title)
    chunks = list(Chunk.objects.filter(document=document).order_by("position"))
    assert document.chunk_count == len(chunks) >= 1
    assert any(expected in c.text for c in chunks)
    assert all(len(c.embedding) == 384 for c in chunks)
    assert "Copyright" not in " ".join(c.text for c in chunks)
    assert KnowledgeBase.objects.get(pk=kb.pk).embedded_with == "local/all-MiniLM-L6-v2"


def test_markdown_sections_become_separate_chunks_with_their_headings(alice):
    document = ingest(base(alice), "leave.md", LEAVE)

    chunks = Chunk.objects.filter(document=document).order_by("position")
    assert [(c.position, c.heading) for c in chunks] == [(0, "Annual leave"), (1, "Sick leave")]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("report.docx", b"PK\x03\x04 whatever", "unsupported file type .docx"),
        ("scan.pdf", pdf_without_text(), "no text layer"),
        ("empty.txt", b"   \n\n ", "empty"),
        ("blob.txt", b"abc\x00\x01\x02" * 100, "binary"),
        ("latin.txt", "Café crème".encode("latin-1"), "not UTF-8"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "PDF cannot be read"),
    ],
    ids=["unsupported", "image-only-pdf", "empty", "binary", "undecodable", "malformed-pdf"],
)
def test_a_bad_document_fails_with_a_readable_reason_and_no_chunks(alice, name, data, reason):
    document = ingest(base(alice), name, data)

    assert document.status == DocumentStatus.FAILED
    assert reason in document.error
    assert "Traceback" not in document.error
    assert not Chunk.objects.filter(document=document).exists()


def test_a_file_over_the_limit_fails_without_being_read(alice, settings):
    settings.WARDEN_KNOWLEDGE_MAX_BYTES = 1000

    document = ingest(base(alice), "big.txt", b"word " * 1000)

    assert document.status == DocumentStatus.FAILED
    assert "the limit is" in document.error


def test_the_same_content_twice_is_one_document(alice):
    kb = base(alice)
    first = ingest(kb, "a.md", LEAVE)

    again, created = document_add(
        knowledge_base=kb, actor=SYSTEM, name="copy.md", data=LEAVE, enqueue=False
    )

    assert (again.pk, created) == (first.pk, False)
    assert Document.objects.filter(knowledge_base=kb).count() == 1


def test_a_folder_is_ingested_and_its_bad_files_are_listed(alice, tmp_path, capsys):
    kb = base(alice, slug="folder-kb")
    (tmp_path / "leave.md").write_bytes(LEAVE)
    (tmp_path / "deploy.md").write_bytes(ENGINEERING)
    (tmp_path / "scan.pdf").write_bytes(pdf_without_text())
    (tmp_path / "ignored.png").write_bytes(b"\x89PNG")

    call_command("ingest_folder", "folder-kb", str(tmp_path))

    out, err = capsys.readouterr()
    assert "2 read, 0 already there, 1 failed" in out
    assert "scan.pdf" in err
    assert "no text layer" in err
    statuses = dict(Document.objects.filter(knowledge_base=kb).values_list("filename", "status"))
    assert statuses == {"deploy.md": "ready", "leave.md": "ready", "scan.pdf": "failed"}


# --- retrieval and permissions --------------------------------------------------------------


def test_search_finds_the_passage_and_cites_its_document_and_position(alice):
    kb = base(alice)
    leave = ingest(kb, "leave.md", LEAVE)
    ingest(kb, "deploy.md", ENGINEERING)

    passages = knowledge_search(actor=alice, query="how many days of annual leave?", k=2)

    assert passages[0].document == leave.pk
    assert passages[0].position == 0
    assert "25 days" in passages[0].text
    assert passages[0].similarity > 0.5


def test_search_never_returns_passages_the_user_may_not_read(alice, bob):
    hr = base(alice)
    ingest(hr, "leave.md", LEAVE)
    engineering = base(bob)
    ingest(engineering, "deploy.md", ENGINEERING)

    for_bob = knowledge_search(actor=bob, query="annual leave days", k=10)
    asked_for_hr = knowledge_search(
        actor=bob, query="annual leave days", knowledge_bases=[hr.pk], k=10
    )

    assert {p.knowledge_base for p in for_bob} == {engineering.pk}
    assert asked_for_hr == []


def test_group_readers_and_superusers_may_read(alice, bob):
    hr = base(alice)
    ingest(hr, "leave.md", LEAVE)
    staff = Group.objects.create(name="Staff")
    bob.groups.add(staff)
    root = get_user_model().objects.create_superuser("root")

    before = knowledge_search(actor=bob, query="annual leave", k=3)
    access_grant(obj=hr, holder=staff, action=Action.READ, actor=SYSTEM)

    assert before == []
    assert knowledge_search(actor=bob, query="annual leave", k=3)[0].knowledge_base == hr.pk
    assert knowledge_search(actor=root, query="annual leave", k=3)[0].knowledge_base == hr.pk


@pytest.fixture
def route(server):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    return route


def execute(agent, user, text) -> Run:
    grant_agent(user, agent)
    conversation = Conversation.objects.create(owner=user, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=user, input=text, stream=False)
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


def test_the_retrieval_step_gives_the_model_only_readable_passages(server, route, alice, bob):
    hr = base(alice)
    ingest(hr, "leave.md", LEAVE)
    engineering = base(bob)
    deploy = ingest(engineering, "deploy.md", ENGINEERING)
    agent = Agent.objects.create(name="A", slug=f"a-{uuid.uuid4().hex[:6]}", route=route)
    agent.knowledge_bases.set([hr, engineering])
    server.script("primary", Reply.say("Deploys happen on Tuesdays [1]."))

    run = execute(agent, bob, "when are annual leave days and deploys?")

    retrieval = RunStep.objects.get(run=run, kind="retrieval")
    assert {p["knowledge_base"] for p in retrieval.output["passages"]} == {engineering.pk}
    prompt = str(server.requests["primary"][0]["messages"])
    assert "Tuesdays" in prompt
    assert "25 days" not in prompt
    assert run.state == RunState.SUCCEEDED
    assert run.citations == [
        {
            "n": 1,
            "document": deploy.pk,
            "title": "Deploy guide",
            "position": 0,
            "chunk": Chunk.objects.get(document=deploy).pk,
            "knowledge_base": engineering.pk,
        }
    ]


def test_a_passage_number_names_one_passage_in_the_whole_conversation(server, route, alice):
    hr = base(alice)
    leave = ingest(hr, "leave.md", LEAVE)
    ingest(hr, "deploy.md", ENGINEERING)
    agent = Agent.objects.create(name="A", slug=f"a-{uuid.uuid4().hex[:6]}", route=route)
    agent.knowledge_bases.set([hr])
    grant_agent(alice, agent)
    conversation = Conversation.objects.create(owner=alice, agent=agent)

    def ask(text: str) -> Run:
        run = run_start(
            agent=agent, conversation=conversation, actor=alice, input=text, stream=False
        )
        run_execute(run_id=run.pk, holder="test")
        return Run.objects.get(pk=run.pk)

    server.script("primary", Reply.say("See the policy."))
    first = ask("how many days of annual leave?")
    given = RunStep.objects.get(run=first, kind="retrieval").output["passages"]
    annual = next(p for p in given if "25 days" in p["text"])
    # The follow-up's answer draws on a passage the first run was given, by its number: the
    # model sees the whole conversation, the earlier passages included.
    server.script(
        "primary", Reply.say(f"Deploys are on Tuesdays; leave is 25 days [{annual['n']}].")
    )
    second = ask("and when are deploys?")

    assert [(c["n"], c["document"], c["chunk"]) for c in second.citations] == [
        (annual["n"], leave.pk, annual["chunk"])
    ]
    again = RunStep.objects.get(run=second, kind="retrieval").output["passages"]
    assert min(p["n"] for p in again) == max(p["n"] for p in given) + 1
    assert f"[{annual['n']}]" in str(server.requests["primary"][1]["messages"])


def test_the_knowledge_search_tool_searches_as_the_user(server, route, alice, bob):
    hr = base(alice)
    ingest(hr, "leave.md", LEAVE)
    engineering = base(bob)
    ingest(engineering, "deploy.md", ENGINEERING)
    agent = Agent.objects.create(name="A", slug=f"a-{uuid.uuid4().hex[:6]}", route=route)
    Tool.objects.filter(name="knowledge_search").update(enabled=True)
    agent.tools.set(Tool.objects.filter(name="knowledge_search"))
    agent.knowledge_bases.set([hr, engineering])
    server.script(
        "primary",
        Reply.call("knowledge_search", {"query": "annual leave days", "limit": 10}),
        Reply.say("done"),
    )

    run = execute(agent, bob, "search please")

    tool = RunStep.objects.get(run=run, kind="tool")
    titles = {p["title"] for p in tool.output["result"]["passages"]}
    assert titles == {"Deploy guide"}
    assert "25 days" not in str(server.requests["primary"][1]["messages"])


# --- re-ingesting and embedding models ------------------------------------------------------


class Site:
    """A web server on loopback whose pages the test changes."""

    def __init__(self):
        self.pages: dict[str, tuple[int, dict, bytes]] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                status, headers, body = site.pages.get(self.path, (404, {}, b"missing"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def page(self, path: str, body: bytes, content_type="text/markdown") -> None:
        self.pages[path] = (200, {"Content-Type": content_type}, body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site():
    site = Site()
    yield site
    site.close()


def test_a_url_on_a_private_network_is_refused(alice, site):
    site.page("/leave", LEAVE)
    kb = base(alice)

    document = document_add_url(
        knowledge_base=kb, actor=alice, url=site.url("/leave"), enqueue=False
    )
    document = document_ingest(document_id=document.pk)

    assert document.status == DocumentStatus.FAILED
    assert "private or reserved network (127.0.0.1)" in document.error


def test_a_url_is_fetched_and_a_redirect_to_a_private_address_is_refused(alice, site, settings):
    settings.WARDEN_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.1/32"]
    site.page("/leave", LEAVE)
    site.pages["/moved"] = (302, {"Location": "http://10.1.2.3/secret"}, b"")
    kb = base(alice)

    fetched = document_ingest(
        document_id=document_add_url(
            knowledge_base=kb, actor=alice, url=site.url("/leave"), enqueue=False
        ).pk
    )
    moved = document_ingest(
        document_id=document_add_url(
            knowledge_base=kb, actor=alice, url=site.url("/moved"), enqueue=False
        ).pk
    )

    assert (fetched.status, fetched.title) == (DocumentStatus.READY, "Leave policy")
    assert moved.status == DocumentStatus.FAILED
    assert "10.1.2.3" in moved.error


def test_reingesting_replaces_every_chunk_at_once_and_a_failure_keeps_the_old(
    alice, site, settings
):
    settings.WARDEN_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.1/32"]
    site.page("/policy", LEAVE)
    kb = base(alice)
    document = document_add_url(
        knowledge_base=kb, actor=alice, url=site.url("/policy"), enqueue=False
    )
    document_ingest(document_id=document.pk)
    old = set(Chunk.objects.filter(document=document).values_list("text", flat=True))

    site.page("/policy", ENGINEERING)
    document_ingest(document_id=document.pk)
    new = set(Chunk.objects.filter(document=document).values_list("text", flat=True))
    site.pages["/policy"] = (500, {}, b"down")
    failed = document_ingest(document_id=document.pk)

    assert not old & new
    assert any("Tuesdays" in text for text in new)
    assert failed.status == DocumentStatus.FAILED
    assert "HTTP 500" in failed.error
    assert set(Chunk.objects.filter(document=document).values_list("text", flat=True)) == new


def test_an_embedding_model_of_the_wrong_dimension_is_refused(alice, server):
    server.embedding_dimensions = 1536
    wrong = ModelRoute.objects.create(name=f"emb-{uuid.uuid4().hex[:6]}", num_retries=0)
    Deployment.objects.create(
        route=wrong, position=1, model="openai/embedder", api_base=server.base("embed")
    )
    kb = base(alice)
    form = KnowledgeBaseForm(
        instance=kb,
        data={
            "name": kb.name,
            "slug": kb.slug,
            "owner": alice.pk,
            "embedding_route": wrong.pk,
            "chunk_tokens": 200,
            "chunk_overlap": 30,
        },
    )

    assert not form.is_valid()
    assert "returns 1536 dimensions; knowledge bases store 384" in str(form.errors)
    assert KnowledgeBase.objects.get(pk=kb.pk).embedding_route is None


def test_changing_the_embedding_model_embeds_every_chunk_again(alice, server):
    kb = base(alice)
    document = ingest(kb, "leave.md", LEAVE)
    before = [list(c.embedding) for c in Chunk.objects.filter(document=document)]
    other = ModelRoute.objects.create(name=f"emb-{uuid.uuid4().hex[:6]}", num_retries=0)
    Deployment.objects.create(
        route=other, position=1, model="openai/embedder", api_base=server.base("embed")
    )
    kb.embedding_route = other
    kb.save()

    count = knowledge_base_reembed(knowledge_base_id=kb.pk)

    after = [list(c.embedding) for c in Chunk.objects.filter(document=document)]
    assert count == len(before) == len(after)
    assert all(b != a for b, a in zip(before, after, strict=True))
    assert KnowledgeBase.objects.get(pk=kb.pk).embedded_with == f"openai/embedder via {other.name}"
    assert len(server.requests["embed:embeddings"]) == 1
    # Queries now go through the new model too, and still find the passage.
    assert knowledge_search(actor=alice, query="annual leave", k=1)


# --- the admin ------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, alice):
    root = get_user_model().objects.create_user("gail", is_staff=True, is_superuser=True)
    client.force_login(root)
    return client


def test_the_admin_queues_uploads_and_urls_and_says_what_it_skipped(
    staff_client, alice, settings, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.WARDEN_KNOWLEDGE_MAX_BYTES = 2000
    kb = base(alice)
    ingest(kb, "leave.md", LEAVE)

    with django_capture_on_commit_callbacks() as enqueued:
        response = staff_client.post(
            f"/admin/agents/knowledgebase/{kb.pk}/add-documents/",
            {
                "files": [
                    SimpleUploadedFile("deploy.md", ENGINEERING),
                    SimpleUploadedFile("again.md", LEAVE),
                    SimpleUploadedFile("huge.txt", b"x" * 3000),
                ],
                "urls": "https://docs.example.com/travel.html\n",
            },
            follow=True,
        )

    text = response.content.decode()
    assert response.status_code == 200
    assert "2 document(s) queued" in text
    assert "1 file(s) were already here" in text
    assert "Not added: huge.txt (the file is 2.9 KB; the limit is 2 KB)." in text
    assert len(enqueued) == 2  # read by a worker after the commit
    assert sorted(
        Document.objects.filter(knowledge_base=kb).values_list("filename", "url", "status")
    ) == [
        ("", "https://docs.example.com/travel.html", "queued"),
        ("deploy.md", "", "queued"),
        ("leave.md", "", "ready"),
    ]


def test_the_admin_refuses_an_empty_upload_form(staff_client, alice):
    kb = base(alice)

    response = staff_client.post(f"/admin/agents/knowledgebase/{kb.pk}/add-documents/", {})

    assert response.status_code == 200
    assert "Choose files or give URLs." in response.content.decode()
    assert not Document.objects.filter(knowledge_base=kb).exists()


def test_the_knowledge_base_page_offers_uploads_and_shows_each_documents_error(staff_client, alice):
    kb = base(alice)
    ingest(kb, "leave.md", LEAVE)
    ingest(kb, "scan.pdf", pdf_without_text())

    response = staff_client.get("/admin/agents/knowledgebase/")
    page = staff_client.get(f"/admin/agents/knowledgebase/{kb.pk}/change/").content.decode()

    assert response.status_code == 200
    assert "Add documents" in page
    assert "no text layer" in page  # the failed document's reason, on the knowledge base
