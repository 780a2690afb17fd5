"""Feedback on answers: the person who asked rates a run's answer up or down, with an optional
comment, and may change it; the agent's owners read it.

Who may rate: whoever may see the run in the chat (agents.selectors.access_run, the run's one
access check: its asker), and only once the run answered. Who may read: the author, and the
agent's owners, those who may change the agent (in the admin: the model-wide
`agents.change_agent` permission, or guardian's object permission on that agent, directly or
through a group), or who may view all feedback (`agents.view_feedback`: auditors).

A comment is the author's words: anyone else sees personal data in it as the audit trail keeps
it, a keyed hash (audit.pii.as_seen_by); the audit event records the rating, not the comment.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet

from agents.models import FEEDBACK_COMMENT_LENGTH, Agent, Feedback, Rating, Run, RunState
from agents.selectors import access_run
from agents.services import RunError
from audit.services import Target, audit_record
from governance.access import is_active
from tools.schemas import text_problem

__all__ = [
    "FeedbackInvalid",
    "RunUnanswered",
    "feedback_agents",
    "feedback_of",
    "feedback_record",
    "feedback_visible_to",
    "may_read_feedback",
]


class RunUnanswered(RunError):
    """The run has no answer to rate (yet, or ever: it failed, was stopped or refused)."""

    code = "run_unanswered"


class RatingInvalid(RunError):
    code = "rating_invalid"


class CommentInvalid(RunError):
    code = "comment_invalid"


FeedbackInvalid = (RatingInvalid, CommentInvalid)


def feedback_record(*, actor: Any, run_id: object, rating: str, comment: str | None = None):
    """The actor's feedback on the run `run_id`, made or changed: `rating` up or down, and
    `comment` (None keeps the one given before). NoAccess when the actor may not see the run,
    RunUnanswered when it has no answer, RatingInvalid or CommentInvalid for bad values;
    nothing is written then. Audited as `run.feedback`."""
    run = access_run(actor, run_id)
    if rating not in Rating.values:
        raise RatingInvalid("the rating is “up” or “down”")
    if comment is not None:
        if not isinstance(comment, str):
            raise CommentInvalid("the comment is text")
        comment = comment.strip()
        if len(comment) > FEEDBACK_COMMENT_LENGTH:
            raise CommentInvalid(f"the comment is longer than {FEEDBACK_COMMENT_LENGTH} characters")
        if problem := text_problem(comment):
            raise CommentInvalid(f"the comment {problem}")
    if run.state != RunState.SUCCEEDED:
        raise RunUnanswered("only an answer can be rated: this run has none")
    with transaction.atomic():
        mine = Feedback.objects.select_for_update().filter(run=run, author=actor)
        feedback = mine.first()
        previous = feedback.rating if feedback is not None else None
        if feedback is None:
            try:
                with transaction.atomic():  # the same person's other request may win the race
                    feedback = Feedback.objects.create(
                        run=run, author=actor, rating=rating, comment=comment or ""
                    )
            except IntegrityError:
                feedback = mine.get()
                previous = feedback.rating
        if previous is not None:
            feedback.rating = rating
            fields = ["rating", "updated_at"]
            if comment is not None:
                feedback.comment = comment
                fields.append("comment")
            feedback.save(update_fields=fields)
        audit_record(
            actor=actor,
            action="run.feedback",
            target=Target.of(feedback),
            run=run.pk,
            conversation=run.conversation_id,
            data={
                "rating": rating,
                "previous": previous,
                "commented": bool(feedback.comment),
                "agent": run.agent.slug if run.agent else None,
            },
        )
    return feedback


def feedback_agents(user) -> QuerySet[Agent]:
    """The agents whose feedback `user` may read (the module docstring: their owners)."""
    from guardian.shortcuts import get_objects_for_user

    if not is_active(user):
        return Agent.objects.none()
    if user.has_perm("agents.view_feedback"):
        return Agent.objects.all()
    # Superusers and the model-wide permission: all; otherwise the object permissions.
    return get_objects_for_user(user, "agents.change_agent", klass=Agent, accept_global_perms=True)


def may_read_feedback(user, agent_id: int | None) -> bool:
    return agent_id is not None and feedback_agents(user).filter(pk=agent_id).exists()


def feedback_visible_to(user) -> QuerySet[Feedback]:
    """The feedback `user` may read: on runs of the agents they own, and their own."""
    if not is_active(user):
        return Feedback.objects.none()
    owned = Q(run__agent__in=feedback_agents(user)) | Q(author_id=user.pk)
    return Feedback.objects.filter(owned).select_related("run__agent", "author")


def feedback_of(user, run: Run) -> list[Feedback]:
    """The feedback on `run` that `user` may read (the run's trace page): all of it for the
    agent's owners, else the user's own."""
    found = Feedback.objects.filter(run=run).select_related("author").order_by("pk")
    if not may_read_feedback(user, run.agent_id):
        found = found.filter(author_id=user.pk)
    return list(found)
