"""Telling reviewers: websocket events to their channel groups (the inbox listens)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

ALL_REVIEWERS = "reviewers"


def reviewer_channel_groups(group_ids: list[int]) -> list[str]:
    """The channel groups a request's deciders listen on: one per approver group, or every
    reviewer's when the request names none."""
    return [f"reviewers.{pk}" for pk in group_ids] or [ALL_REVIEWERS]


def reviewers_notify(group_ids: list[int], event: dict) -> None:
    """Best effort, after commit: the inbox also reloads from the database."""
    for group in reviewer_channel_groups(group_ids):
        _send(group, {"type": "review.event", "event": event})


def user_notify(user_id: int, event: dict) -> None:
    """An event for one user's open pages (channel group `user.<id>`)."""
    _send(f"user.{user_id}", {"type": "user.event", "event": event})


def _send(group: str, message: dict) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    try:
        async_to_sync(get_channel_layer().group_send)(group, message)
    except Exception:
        logger.warning(
            "could not notify %s of %s", group, message["event"].get("type"), exc_info=True
        )
