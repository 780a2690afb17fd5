from celery import shared_task

from audit.services import audit_anchor


# celery ships no types: the decorated task is untyped to mypy.
@shared_task(name="audit.tasks.audit_anchor_task")  # type: ignore[untyped-decorator]
def audit_anchor_task() -> int | None:
    """Run by Celery beat (CELERY_BEAT_SCHEDULE); returns the new anchor's sequence, if any."""
    anchor = audit_anchor()
    return anchor.sequence if anchor else None
