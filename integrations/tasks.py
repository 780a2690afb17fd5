from celery import shared_task

from integrations.webhooks import webhook_deliver, webhook_deliveries_overdue


# Task names are kept from before the split (portal.tasks): messages already queued still find them.
@shared_task(name="portal.tasks.webhook_deliver_task")
def webhook_deliver_task(delivery_id: str) -> str:
    """Attempt one webhook delivery; a retryable failure enqueues the next attempt after its
    backoff. A message that is not due, or for a delivery already delivered or failed, does
    nothing (the database, not the message, decides); delivery itself is at least once
    (integrations.webhooks: a worker lost mid-attempt means the event is sent again, same id)."""
    attempted = webhook_deliver(delivery_id=delivery_id)
    if attempted.retry_in is not None:
        webhook_deliver_task.apply_async((delivery_id,), countdown=attempted.retry_in)
    return attempted.status


@shared_task(name="portal.tasks.webhook_deliveries_resume_task")
def webhook_deliveries_resume_task() -> int:
    """Beat: re-enqueue pending deliveries whose message was lost or whose attempt's worker
    died (its lease ran out)."""
    overdue = webhook_deliveries_overdue()
    for delivery_id in overdue:
        webhook_deliver_task.delay(delivery_id)
    return len(overdue)
