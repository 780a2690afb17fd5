"""Re-ingesting as another connection sees it: the old chunks or the new, never a mix or none."""

import threading
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from agents.knowledge.services import document_add, document_ingest
from agents.models import Chunk, Document, KnowledgeBase
from audit.services import SYSTEM

pytestmark = pytest.mark.usefixtures("committing_db")

OLD = "\n\n".join(f"Old paragraph {i} about the travel policy." for i in range(40)).encode()
NEW = "\n\n".join(f"New paragraph {i} about the expense policy." for i in range(55)).encode()


def test_readers_see_the_old_chunks_or_the_new_never_a_mix():
    owner = get_user_model().objects.create_user(f"o-{uuid.uuid4().hex[:6]}")
    kb = KnowledgeBase.objects.create(
        name="kb", slug=f"kb-{uuid.uuid4().hex[:6]}", owner=owner, chunk_tokens=32, chunk_overlap=0
    )
    document, _ = document_add(
        knowledge_base=kb, actor=SYSTEM, name="policy.txt", data=OLD, enqueue=False
    )
    document_ingest(document_id=document.pk)
    old = frozenset(Chunk.objects.filter(document=document).values_list("text", flat=True))
    seen: set[frozenset] = set()
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                seen.add(
                    frozenset(
                        Chunk.objects.filter(document=document).values_list("text", flat=True)
                    )
                )
        finally:
            connection.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for content in (NEW, OLD, NEW):
            Document.objects.filter(pk=document.pk).update(content=content, content_hash="")
            assert document_ingest(document_id=document.pk).status == "ready"
    finally:
        done.set()
        reader.join()
    new = frozenset(Chunk.objects.filter(document=document).values_list("text", flat=True))

    assert len(old) > 1
    assert len(new) > 1
    assert not old & new
    assert seen  # the reader read
    assert seen <= {old, new}


def test_a_worker_reads_an_added_document(celery_worker_process):
    import time

    owner = get_user_model().objects.create_user(f"o-{uuid.uuid4().hex[:6]}")
    kb = KnowledgeBase.objects.create(name="kb", slug=f"kb-{uuid.uuid4().hex[:6]}", owner=owner)

    document, created = document_add(
        knowledge_base=kb, actor=owner, name="policy.txt", data=OLD
    )  # enqueued after the commit
    deadline = time.monotonic() + 120
    while Document.objects.get(pk=document.pk).status in ("queued", "processing"):
        assert time.monotonic() < deadline, "no worker read the document"
        time.sleep(0.2)

    assert created
    assert Document.objects.get(pk=document.pk).status == "ready"
    assert Chunk.objects.filter(document=document).count() > 1
