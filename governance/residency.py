"""Data residency: the regions a run may use, from the agent's and the actor's teams' rules."""

from __future__ import annotations

from governance.models import TeamPolicy


def allowed_regions(*, user, agent_regions: list[str]) -> tuple[str, ...] | None:
    """The regions every rule that applies allows (None: no rule applies, any region will
    do). An empty tuple means the rules leave no region at all: nothing may be called."""
    rules = [set(agent_regions)] if agent_regions else []
    rules += [
        set(regions)
        for regions in TeamPolicy.objects.filter(group__user=user.pk)
        .exclude(allowed_regions=[])
        .values_list("allowed_regions", flat=True)
    ]
    if not rules:
        return None
    return tuple(sorted(set.intersection(*rules)))
