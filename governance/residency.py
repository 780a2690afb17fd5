"""Data residency: the regions a run may use, from the agent's and the actor's teams' rules."""

from __future__ import annotations

from governance.models import TeamPolicy


def allowed_regions(*, user, agent_regions: list[str]) -> tuple[str, ...] | None:
    """The regions every rule that applies allows (None: no rule applies, any region will
    do). An empty tuple means the rules leave no region at all: nothing may be called."""
    teams = (
        TeamPolicy.objects.filter(group__user=user.pk)
        .exclude(allowed_regions=[])
        .values_list("allowed_regions", flat=True)
    )
    return regions_allowed(agent_regions=agent_regions, team_regions=list(teams))


def regions_allowed(
    *, agent_regions: list[str], team_regions: list[list[str]]
) -> tuple[str, ...] | None:
    """`allowed_regions` from rules already read (governance.snapshot)."""
    rules = [set(agent_regions)] if agent_regions else []
    rules += [set(regions) for regions in team_regions if regions]
    if not rules:
        return None
    return tuple(sorted(set.intersection(*rules)))
