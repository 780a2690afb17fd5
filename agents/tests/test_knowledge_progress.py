"""A knowledge base's progress on its page: each document's status, n of m ready, failures
named, a re-embedding counted document by document; JSON the page asks for while work goes
on, for those who may read the base only."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from agents.knowledge import services
from agents.knowledge.services import document_add, knowledge_base_reembed
from agents.models import Deployment, Document, KnowledgeBase, ModelRoute
from agents.tests.pdf import pdf_without_text
from agents.tests.test_knowledge import ENGINEERING, LEAVE, base, ingest
from audit.services import SYSTEM

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice")


@pytest.fixture
def staff_client(client):
    root = get_user_model().objects.create_user("gail", is_staff=True, is_superuser=True)
    client.force_login(root)
    return client


@pytest.fixture
def mixed(alice):
    """A base with one document of each kind: ready, failed, queued, and a duplicate."""
    kb = base(alice)
    ready = ingest(kb, "leave.md", LEAVE)
    failed = ingest(kb, "scan.pdf", pdf_without_text())
    queued, _ = document_add(
        knowledge_base=kb, actor=SYSTEM, name="deploy.md", data=ENGINEERING, enqueue=False
    )
    twin = Document.objects.create(
        knowledge_base=kb, source="upload", filename="copy.md", title="copy", status="duplicate"
    )
    return kb, ready, failed, queued, twin


def test_the_progress_names_each_document_and_what_failed(
    staff_client, mixed, django_assert_max_num_queries
):
    kb, ready, failed, queued, twin = mixed

    with django_assert_max_num_queries(8):  # session, user, the base, the counts, the rows
        response = staff_client.get(f"/admin/agents/knowledgebase/{kb.pk}/progress/")

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert {k: body[k] for k in ("total", "ready", "pending", "failed", "working", "more")} == {
        "total": 3,  # the duplicate is another's content
        "ready": 1,
        "pending": 1,
        "failed": 1,
        "working": True,
        "more": 0,
    }
    assert body["summary"] == (
        "1 of 3 documents ready; 1 waiting to be read or being read; 1 failed: scan."
    )
    assert body["reembed"] == {"done": 0, "total": 0}
    # The failed first, then the unfinished, the ready and the duplicate.
    assert [(d["id"], d["status"]) for d in body["documents"]] == [
        (failed.pk, "failed"),
        (queued.pk, "queued"),
        (ready.pk, "ready"),
        (twin.pk, "duplicate"),
    ]
    first = body["documents"][0]
    assert "no text layer" in first["error"]
    assert first["url"] == f"/admin/agents/document/{failed.pk}/change/"
    assert body["documents"][2]["chunks"] == ready.chunk_count > 0


def test_the_page_shows_the_progress_and_follows_it_while_work_goes_on(staff_client, mixed):
    kb, _ready, failed, _queued, _twin = mixed

    page = staff_client.get(f"/admin/agents/knowledgebase/{kb.pk}/change/").content.decode()

    assert f'data-progress-url="/admin/agents/knowledgebase/{kb.pk}/progress/"' in page
    assert 'data-working="1"' in page
    assert "1 of 3 documents ready; 1 waiting to be read or being read; 1 failed: scan." in page
    assert '<progress data-bar max="3" value="1" aria-label="Documents ready"' in page
    assert f'<a href="/admin/agents/document/{failed.pk}/change/">scan</a>' in page
    assert "no text layer" in page
    assert "portal/progress.js" in page

    Document.objects.filter(knowledge_base=kb).exclude(status="duplicate").update(status="ready")
    page = staff_client.get(f"/admin/agents/knowledgebase/{kb.pk}/change/").content.decode()
    assert 'data-working="0"' in page  # nothing more will change by itself: no polling
    assert "3 of 3 documents ready." in page


def test_a_long_list_names_the_first_failures_and_counts_the_rest(staff_client, alice):
    kb = base(alice)
    Document.objects.bulk_create(
        Document(knowledge_base=kb, source="url", title=f"page {i}", status="failed", error="404")
        for i in range(5)
    )

    body = staff_client.get(f"/admin/agents/knowledgebase/{kb.pk}/progress/").json()

    assert body["summary"] == (
        "0 of 5 documents ready; 5 failed: page 4, page 3, page 2 and 2 more."
    )
    assert body["working"] is False


def test_no_progress_for_whoever_may_not_read_the_base(client, mixed):
    kb = mixed[0]
    clerk = get_user_model().objects.create_user("clerk", is_staff=True)
    clerk.user_permissions.add(
        Permission.objects.get(codename="view_knowledgebase", content_type__app_label="agents")
    )  # may view knowledge bases in the admin, has no grant to read this one
    url = f"/admin/agents/knowledgebase/{kb.pk}/progress/"

    assert client.get(url).status_code == 302  # signed out: to the sign-in page
    client.force_login(clerk)
    response = client.get(url)
    assert response.status_code == 404
    assert "scan" not in response.content.decode()


def test_a_reembedding_is_counted_document_by_document(alice, server, monkeypatch):
    kb = base(alice)
    for name, data in (("leave.md", LEAVE), ("deploy.md", ENGINEERING), ("x.md", b"# X\n\nx")):
        ingest(kb, name, data)
    route = ModelRoute.objects.create(name=f"emb-{uuid.uuid4().hex[:6]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/embedder", api_base=server.base("embed")
    )
    KnowledgeBase.objects.filter(pk=kb.pk).update(embedding_route=route)
    seen = []
    real = services._embed_in_batches

    def watched(**kwargs):  # what the page would read as each document's turn comes
        seen.append(
            tuple(
                KnowledgeBase.objects.filter(pk=kb.pk)
                .values_list("reembed_done", "reembed_total")
                .get()
            )
        )
        return real(**kwargs)

    monkeypatch.setattr(services, "_embed_in_batches", watched)

    knowledge_base_reembed(knowledge_base_id=kb.pk)

    assert seen == [(0, 3), (1, 3), (2, 3)]
    after = KnowledgeBase.objects.get(pk=kb.pk)
    assert (after.reembed_done, after.reembed_total) == (0, 0)  # no longer under way


def test_a_failed_reembedding_is_no_longer_shown_as_under_way(alice, server, monkeypatch):
    kb = base(alice)
    for name, data in (("leave.md", LEAVE), ("deploy.md", ENGINEERING)):
        ingest(kb, name, data)
    route = ModelRoute.objects.create(name=f"emb-{uuid.uuid4().hex[:6]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/embedder", api_base=server.base("embed")
    )
    KnowledgeBase.objects.filter(pk=kb.pk).update(embedding_route=route, embedded_with="local")
    real = services._embed_in_batches
    calls = []

    def second_fails(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            server.embedding_dimensions = 1536  # the route's model changed under us
        return real(**kwargs)

    monkeypatch.setattr(services, "_embed_in_batches", second_fails)

    with pytest.raises(services.EmbeddingError):
        knowledge_base_reembed(knowledge_base_id=kb.pk)

    after = KnowledgeBase.objects.get(pk=kb.pk)
    assert (after.reembed_done, after.reembed_total, after.embedded_with) == (0, 0, "local")


def test_changing_the_embedding_model_in_the_admin_shows_the_work_queued(
    staff_client, alice, server, django_capture_on_commit_callbacks
):
    kb = base(alice)
    ingest(kb, "leave.md", LEAVE)
    ingest(kb, "deploy.md", ENGINEERING)
    route = ModelRoute.objects.create(name=f"emb-{uuid.uuid4().hex[:6]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/embedder", api_base=server.base("embed")
    )

    with django_capture_on_commit_callbacks() as enqueued:
        response = staff_client.post(
            f"/admin/agents/knowledgebase/{kb.pk}/change/",
            {
                "name": kb.name,
                "slug": kb.slug,
                "owner": alice.pk,
                "embedding_route": route.pk,
                "chunk_tokens": 200,
                "chunk_overlap": 30,
                "_continue": "1",
            },
        )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert len(enqueued) == 1  # the re-embedding, after the commit
    body = staff_client.get(f"/admin/agents/knowledgebase/{kb.pk}/progress/").json()
    assert body["reembed"] == {"done": 0, "total": 2}
    assert body["working"] is True
    assert body["summary"].endswith("Embedding again with the new model: 0 of 2 documents done.")
