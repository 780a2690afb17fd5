"""What governs a run, read in one statement: may the user use the agent and its route, which
regions the user's teams allow, which budgets count. A run asks this when it starts and each
time a worker takes it up, so it is one round trip (four separate queries cost 6.6 ms)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connection

from governance.access import allowed_ids
from governance.models import Action

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.db.models import Model


@dataclass(frozen=True)
class Snapshot:
    may_use_agent: bool
    may_use_route: bool
    team_regions: list[list[str]]  # each team rule that names regions
    budget_ids: list[int]


def governance_snapshot(*, user: User, agent: Any, route_model: type[Model]) -> Snapshot:
    """For the active `user` and `agent` (a saved Agent; `route_model`, the ModelRoute class)."""
    agent_sql, agent_params = allowed_ids(type(agent), user, Action.USE)
    route_sql, route_params = allowed_ids(route_model, user, Action.USE)
    groups = "SELECT group_id FROM auth_user_groups WHERE user_id = %s"
    sql = f"""SELECT %s IN ({agent_sql}), %s IN ({route_sql}),
        (SELECT json_agg(tp.allowed_regions) FROM governance_teampolicy tp
         WHERE tp.group_id IN ({groups}) AND cardinality(tp.allowed_regions) > 0),
        ARRAY(SELECT b.id FROM governance_budget b WHERE b.enabled
              AND (b.user_id = %s OR b.agent_id = %s OR b.group_id IN ({groups}))
              ORDER BY b.id)"""  # noqa: S608 - table names and parameters only
    params = [agent.pk, *agent_params, agent.route_id, *route_params, user.pk]
    params += [user.pk, agent.pk, user.pk]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        may_agent, may_route, regions, budgets = cursor.fetchone()
    if isinstance(regions, str):
        regions = json.loads(regions)
    return Snapshot(bool(may_agent), bool(may_route), regions or [], list(budgets))
