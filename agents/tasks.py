import os
import socket

from celery import shared_task

from agents.orchestrator import run_execute
from agents.services import runs_to_resume


@shared_task(bind=True, name="agents.tasks.run_execute_task")
def run_execute_task(self, run_id: int) -> None:
    """Advance one run (acks_late and reject_on_worker_lost come from settings: a worker that
    dies mid-run has its message redelivered, and the lease decides who continues)."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
    run_execute(run_id=run_id, holder=holder)


@shared_task(name="agents.tasks.run_resume_task")
def run_resume_task() -> int:
    """Beat: re-enqueue runs no worker is advancing (lease expired, or message lost)."""
    run_ids = runs_to_resume()
    for run_id in run_ids:
        run_execute_task.delay(run_id)
    return len(run_ids)


@shared_task(name="agents.tasks.knowledge_ingest_task")
def knowledge_ingest_task(document_id: int) -> str:
    """Read, chunk and embed one document (marked failed with a reason if it cannot be)."""
    from agents.knowledge.services import document_ingest

    return document_ingest(document_id=document_id).status


@shared_task(name="agents.tasks.knowledge_reembed_task")
def knowledge_reembed_task(knowledge_base_id: int) -> int:
    """Embed a knowledge base's chunks again after its embedding model changed."""
    from agents.knowledge.services import knowledge_base_reembed

    return knowledge_base_reembed(knowledge_base_id=knowledge_base_id)
