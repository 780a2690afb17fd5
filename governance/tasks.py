from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail

from governance import roles
from governance.approvals import approvals_expire, deciders
from governance.budgets import budget_reservations_release
from governance.models import ApprovalRequest, ApprovalStatus, Budget
from governance.notify import user_notify

logger = logging.getLogger(__name__)


# A notice that could not be sent (the mail server out of reach) is tried again, a bounded
# number of times, at growing intervals.
_MAIL_RETRIES = {"autoretry_for": (OSError,), "retry_backoff": True, "max_retries": 3}


# celery ships no types: each decorated task is untyped to mypy.
@shared_task(  # type: ignore[untyped-decorator]
    name="governance.tasks.approval_notify_task", ignore_result=True, **_MAIL_RETRIES
)
def approval_notify_task(approval_id: int) -> None:
    """Email the people who may decide a new approval request (not the requester)."""
    request = ApprovalRequest.objects.filter(pk=approval_id).first()
    if request is None or request.status != ApprovalStatus.PENDING:
        return
    groups = list(request.approver_groups.values_list("pk", flat=True))
    recipients = sorted(
        set(
            get_user_model()
            .objects.filter(deciders(groups), is_active=True)
            .exclude(pk=request.requested_by_id)
            .exclude(email="")
            .values_list("email", flat=True)
        )
    )
    if not recipients:
        return
    send_mail(
        subject=f"[Warden] Approval needed: {request.tool_name} (run {request.run_id})",
        message=(
            f"{request.requested_by.get_username()}'s run {request.run_id} wants to call "
            f"{request.tool_name}.\nWhy it needs approval: {', '.join(request.reasons)}.\n"
            f"It expires at {request.expires_at:%Y-%m-%d %H:%M %Z}.\n"
            "Decide it in Warden's reviewer inbox."
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=recipients,
    )


@shared_task(name="governance.tasks.approvals_expire_task", ignore_result=True)  # type: ignore[untyped-decorator]
def approvals_expire_task() -> None:
    expired = approvals_expire()
    if expired:
        logger.info("expired %d approval requests", expired)


@shared_task(  # type: ignore[untyped-decorator]
    name="governance.tasks.budget_notify_task", ignore_result=True, **_MAIL_RETRIES
)
def budget_notify_task(budget_id: int) -> None:
    """A budget passed its notify mark: tell whom it limits (a user, a team's members, or for
    an agent's budget the governance admins), by websocket and email."""
    budget = Budget.objects.filter(pk=budget_id).select_related("user", "group").first()
    if budget is None:
        return
    users = get_user_model().objects.filter(is_active=True)
    if budget.user_id:
        people = users.filter(pk=budget.user_id)
    elif budget.group_id:
        people = users.filter(groups=budget.group_id)
    else:
        people = users.filter(groups__name=roles.GOVERNANCE_ADMIN)
    notified = list(people.distinct())
    event = {"type": "budget.threshold_reached", "budget": budget.name}
    for person in notified:
        user_notify(person.pk, event)
    recipients = sorted({p.email for p in notified if p.email})
    if recipients:
        send_mail(
            subject=f"[Warden] Budget {budget.name!r} is at {budget.notify_at_percent}%",
            message=(
                f"Use of the budget {budget.name!r} passed {budget.notify_at_percent}% of its "
                f"{'daily' if budget.period == 'day' else 'monthly'} limit."
                + (" Calls past the limit will be refused." if budget.hard else "")
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
        )


@shared_task(name="governance.tasks.budget_reservations_release_task", ignore_result=True)  # type: ignore[untyped-decorator]
def budget_reservations_release_task() -> None:
    # No task that reserved runs longer than its time limit (the lease, now a heartbeat
    # timeout of seconds, says nothing of how long a model call may take).
    limit = settings.CELERY_TASK_TIME_LIMIT
    released = budget_reservations_release(older_than=timedelta(seconds=limit))
    if released:
        logger.info("settled %d stale budget reservations at their estimate", released)
