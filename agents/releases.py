"""Releases: a candidate version serving a share of an agent's conversations (issue 25)."""

from __future__ import annotations

from agents.models import Agent, AgentVersion, Conversation


def release_candidate(*, agent: Agent, conversation: Conversation | None) -> AgentVersion | None:
    """The candidate version that serves `conversation`, if a running release gave it one."""
    return None
