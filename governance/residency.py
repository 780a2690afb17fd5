"""Data residency: the regions a run may use, from the agent's and the actor's teams' rules."""

from __future__ import annotations


def regions_allowed(
    *, agent_regions: list[str], team_regions: list[list[str]]
) -> tuple[str, ...] | None:
    """The regions every rule allows: the agent's and each of the user's teams' (read with
    governance.snapshot). None: no rule applies, any region will do; an empty tuple: the rules
    leave no region at all, and nothing may be called."""
    rules = [set(agent_regions)] if agent_regions else []
    rules += [set(regions) for regions in team_regions if regions]
    if not rules:
        return None
    return tuple(sorted(set.intersection(*rules)))
