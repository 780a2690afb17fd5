import logging

from celery import shared_task
from django.conf import settings
from django.db import connection

from agents.faults import backoff, transient
from agents.orchestrator import run_execute
from agents.services import lease_holder_name, runs_to_resume

logger = logging.getLogger(__name__)
# A task retried (the database was away as it started, or another worker's lease was live)
# at most this often; the `run-resume` beat job covers what is left.
RETRIES = 5


@shared_task(bind=True, name="agents.tasks.run_execute_task", max_retries=RETRIES)
def run_execute_task(self, run_id: int) -> None:
    """Advance one run (acks_late and reject_on_worker_lost come from settings: a worker that
    dies mid-run has its message redelivered, and the lease decides who continues)."""
    try:
        lease_left = run_execute(run_id=run_id, holder=lease_holder_name(self.request.id))
    except Exception as exc:
        dependency = transient(exc)
        if dependency is None:
            raise
        connection.close()  # a connection the server dropped stays broken otherwise
        if self.request.retries >= RETRIES:
            logger.warning("run %s: the %s is away; left for the resume job", run_id, dependency)
            return
        raise self.retry(countdown=backoff(self.request.retries + 1), exc=exc) from exc
    if lease_left is not None and self.request.retries < RETRIES:
        # Another worker's lease is live: it may be a dead one's (a killed process's message
        # comes back at once). Try again as it expires rather than wait for the resume job;
        # a live worker heartbeats it, and this retry finds it held again, or the run ended.
        lease = settings.WARDEN_RUN_LEASE_SECONDS
        raise self.retry(countdown=min(lease_left, lease) + 0.5)


@shared_task(name="agents.tasks.run_resume_task")
def run_resume_task() -> int:
    """Beat: re-enqueue runs no worker is advancing (lease expired, or message lost)."""
    run_ids = runs_to_resume()
    for run_id in run_ids:
        run_execute_task.delay(run_id)
    return len(run_ids)


@shared_task(bind=True, name="agents.tasks.knowledge_ingest_task", max_retries=RETRIES)
def knowledge_ingest_task(self, document_id: int) -> str:
    """Read, chunk and embed one document (marked failed with a reason if it cannot be). A
    transient error retries the whole ingestion, which replaces the chunks in one transaction;
    once the retries are spent the document is marked failed naming the dependency."""
    from agents.knowledge.services import document_fail, document_ingest
    from agents.models import Document

    try:
        return document_ingest(document_id=document_id).status
    except Document.DoesNotExist:  # removed before or while it was read (a chat's file)
        return "removed"
    except Exception as exc:
        dependency = transient(exc)
        if dependency is None:
            raise
        connection.close()  # a connection the server dropped stays broken otherwise
        if self.request.retries < RETRIES:
            raise self.retry(countdown=backoff(self.request.retries + 1), exc=exc) from exc
        logger.warning("document %s: the %s stayed away; marked failed", document_id, dependency)
        document_fail(document_id, f"the {dependency} was unavailable; upload it again")
        return "failed"


@shared_task(name="agents.tasks.knowledge_reembed_task")
def knowledge_reembed_task(knowledge_base_id: int) -> int:
    """Embed a knowledge base's chunks again after its embedding model changed."""
    from agents.knowledge.services import knowledge_base_reembed

    return knowledge_base_reembed(knowledge_base_id=knowledge_base_id)


@shared_task(name="agents.tasks.drift_check_task")
def drift_check_task(day: str | None = None) -> int:
    """Beat, daily: compare each agent's signals yesterday (or `day`, YYYY-MM-DD) with their
    reference window (agents.drift); returns how many alerted. Checking a day twice is
    harmless: the checks recorded stand."""
    from datetime import date, timedelta

    from django.utils import timezone

    from agents.drift import drift_check

    when = date.fromisoformat(day) if day else timezone.localdate() - timedelta(days=1)
    return sum(1 for measure, check in drift_check(day=when) if check and check.alert)


@shared_task(name="agents.tasks.evaluation_execute_task")
def evaluation_execute_task(evaluation_id: int) -> str:
    """Run an evaluation's cases (agents.evaluation.services.evaluation_execute); a second
    delivery (the worker died) goes on from the cases already scored."""
    from agents.evaluation.services import evaluation_execute

    return str(evaluation_execute(evaluation_id=evaluation_id).state)


@shared_task(name="agents.tasks.releases_judge_task", ignore_result=True)
def releases_judge_task() -> None:
    """Beat: judge the running releases (roll back on a crossed guard, promote a ready canary)."""
    from agents.releases import releases_judge

    ended = {pk: outcome for pk, outcome in releases_judge().items() if outcome != "kept"}
    if ended:
        logger.info("releases judged: %s", ended)


# A notice the mail server could not take is tried again, a bounded number of times.
@shared_task(
    name="agents.tasks.release_notify_task",
    ignore_result=True,
    autoretry_for=(OSError,),
    retry_backoff=True,
    max_retries=3,
)
def release_notify_task(release_id: int) -> None:
    """Tell an agent's owners that the judge rolled back or promoted its release."""
    from agents.releases import release_notify

    release_notify(release_id)


@shared_task(name="agents.tasks.answer_cache_prune_task")
def answer_cache_prune_task() -> int:
    """Beat: drop the kept answers of agent versions that no longer serve."""
    from agents.answer_cache import cached_answers_prune

    return cached_answers_prune()
