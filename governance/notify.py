"""Telling reviewers: websocket events to their channel groups (the inbox listens), through
the process's one publisher (governance.live)."""

from __future__ import annotations

from typing import Any

from governance.live import send

ALL_REVIEWERS = "reviewers"


def reviewer_channel_groups(group_ids: list[int]) -> list[str]:
    """The channel groups a request's deciders listen on: one per approver group, or every
    reviewer's when the request names none."""
    return [f"reviewers.{pk}" for pk in group_ids] or [ALL_REVIEWERS]


def reviewers_notify(group_ids: list[int], event: dict[str, Any]) -> None:
    """Best effort, after commit (returns at once): the inbox also reloads from the database."""
    for group in reviewer_channel_groups(group_ids):
        send(group, {"type": "review.event", "event": event})


def user_notify(user_id: int, event: dict[str, Any]) -> None:
    """An event for one user's open pages (channel group `user.<id>`)."""
    send(f"user.{user_id}", {"type": "user.event", "event": event})
