"""Agent versions: every change to what an agent does is an immutable AgentVersion, and every
run records the version that served it (issue 25).

An agent's row is its newest version's config, as the console edits it. `Agent.live_version` is
the version that serves its runs; a release (agents.releases) may give a share of conversations
a candidate instead. A change made anywhere else (a shell, a data migration, a test) is found at
the next run's start and recorded as a version of nobody's, so no run is ever served by a config
that no version holds."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from decimal import Decimal
from itertools import zip_longest
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet, Subquery

from agents.models import (
    Agent,
    AgentVersion,
    Conversation,
    KnowledgeBase,
    ModelRoute,
    Release,
    ReleaseState,
)
from audit.services import Target, audit_record
from tools.models import Tool

# What a version holds: the fields that decide how an agent answers. Its name, description,
# rate limits, approver groups and exposure are governance, edited in place and audited as such.
SCALARS = (
    "system_prompt",
    "confidence_threshold",
    "passages_per_run",
    "max_steps",
    "max_tokens_per_run",
    "injection_action",
)
RELATED = ("route", "tools", "knowledge_bases", "delegates")
BEHAVIOUR = ("system_prompt", *RELATED, *SCALARS[1:])

LABELS = {
    "system_prompt": "System prompt",
    "route": "Model route",
    "tools": "Tools",
    "knowledge_bases": "Knowledge bases",
    "delegates": "Agents it may ask",
    "confidence_threshold": "Confidence threshold",
    "passages_per_run": "Passages per run",
    "max_steps": "Max steps",
    "max_tokens_per_run": "Max tokens per run",
    "injection_action": "On a suspected prompt injection",
}

OUTSIDE = "changed outside Warden's console and services; recorded at the next run's start"


class VersionError(Exception):
    """A version that cannot be served or restored (its route was deleted), or not this agent's."""


def _config_of(row: dict) -> dict:
    return {
        "system_prompt": row["system_prompt"],
        "route": row["route_id"],
        "tools": list(row["tool_ids"]),
        "knowledge_bases": list(row["base_ids"]),
        "delegates": list(row["delegate_ids"]),
        "confidence_threshold": str(row["confidence_threshold"]),
        "passages_per_run": row["passages_per_run"],
        "max_steps": row["max_steps"],
        "max_tokens_per_run": row["max_tokens_per_run"],
        "injection_action": row["injection_action"],
    }


_ROW = ("route_id", "tool_ids", "base_ids", "delegate_ids", "head_id", "head_config", *SCALARS)


def _config_sql() -> str:
    """The agent's behaviour as its row holds it, its newest version (id, config), whether a
    release of it runs and its live version: one statement, written out because every run's
    start reads it (version_serving) and the ORM took ~2 ms of Python to build it each time."""

    def members(through, owner: str, member: str) -> str:
        table = through._meta.db_table
        return f"ARRAY(SELECT {member} FROM {table} WHERE {owner} = a.id ORDER BY {member})"  # noqa: S608

    scalars = ", ".join(f"a.{name}" for name in SCALARS)
    return f"""
SELECT a.route_id, {members(Agent.tools.through, "agent_id", "tool_id")},
    {members(Agent.knowledge_bases.through, "agent_id", "knowledgebase_id")},
    {members(Agent.delegates.through, "from_agent_id", "to_agent_id")},
    head.id, head.config, {scalars},
    EXISTS(SELECT 1 FROM {Release._meta.db_table} r
        WHERE r.agent_id = a.id AND r.state = '{ReleaseState.RUNNING}'),
    a.live_version_id
FROM {Agent._meta.db_table} a
LEFT JOIN LATERAL (
    SELECT v.id, v.config FROM {AgentVersion._meta.db_table} v
    WHERE v.agent_id = a.id ORDER BY v.number DESC LIMIT 1
) head ON true
WHERE a.id = %s
"""  # noqa: S608 - names from the models, no input


_CONFIG = _config_sql()
_CONFIG_NAMES = (*_ROW, "releasing", "live_version_id")


def _config_row(agent_id: int) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(_CONFIG, [agent_id])
        found = cursor.fetchone()
    if found is None:
        raise Agent.DoesNotExist(f"no agent {agent_id}")
    row = dict(zip(_CONFIG_NAMES, found, strict=True))
    if row["head_config"] is not None:  # Django reads jsonb as text: JSONField decodes it
        row["head_config"] = json.loads(row["head_config"])
    return row


def _current(agent_id: int, *, lock: bool = False) -> tuple[dict, int | None, dict | None]:
    """The agent's behaviour as its row holds it now, and its newest version (id, config)."""
    if lock:
        # The lock first, the read after it: one statement that did both would read the
        # versions (and the agent's tools, bases and delegates) as they were before it waited,
        # and a writer that waited on another would number its version as that one did.
        Agent.objects.select_for_update().filter(pk=agent_id).values_list("pk").get()
    row = _config_row(agent_id)
    return _config_of(row), row["head_id"], row["head_config"]


def version_record(
    *, agent: Agent, actor, reason: str = "", release: bool | None = True
) -> AgentVersion | None:
    """Record the agent's behaviour as its next version if it differs from its newest one (the
    first version if it has none); None if nothing changed. `release`: the new version serves
    every run from now on (the console may instead start a release with it as candidate);
    None: only if the newest version served (a change on top of a draft stays a draft).
    Audited, in the caller's transaction if there is one."""
    with transaction.atomic():
        config, head_id, head_config = _current(agent.pk, lock=True)
        if head_config == config:
            return None
        if release is None:
            live = Agent.objects.filter(pk=agent.pk).values_list("live_version", flat=True)
            release = head_id is None or live.get() == head_id
        return _create(agent, config, head_id, actor=actor, reason=reason, release=release)


def _create(agent, config, head_id, *, actor, reason, release, rollback_of=None) -> AgentVersion:
    previous = AgentVersion.objects.get(pk=head_id) if head_id else None
    version = AgentVersion.objects.create(
        agent_id=agent.pk,
        number=previous.number + 1 if previous else 1,
        config=config,
        changes=version_changes(previous.config if previous else None, config),
        route_id=config["route"],
        created_by=actor if getattr(actor, "pk", None) else None,
        reason=reason[:2000],
        rollback_of=rollback_of,
    )
    data: dict[str, Any] = {
        "version": version.number,
        "changed": [c["field"] for c in version.changes],
        "reason": version.reason,
    }
    if rollback_of is not None:
        data["restores"] = rollback_of.number
    audit_record(
        actor=actor,
        action="agent.version_rolled_back" if rollback_of else "agent.version_created",
        target=Target.of(agent),
        data=data,
    )
    if release:
        _go_live(agent, version, actor=actor)
    return version


def _go_live(agent: Agent, version: AgentVersion, *, actor) -> None:
    Agent.objects.filter(pk=agent.pk).update(live_version=version)
    agent.live_version = version
    audit_record(
        actor=actor,
        action="agent.version_released",
        target=Target.of(agent),
        data={"version": version.number},
    )


def version_release(*, agent: Agent, version: AgentVersion, actor) -> None:
    """Make `version` serve every run of its agent from now on (agents.releases promotes)."""
    if version.agent_id != agent.pk:
        raise VersionError(f"v{version.number} is not a version of {agent.name}")
    if version.route_id is None:
        raise VersionError(f"v{version.number}'s model route was deleted: it cannot serve")
    with transaction.atomic():
        _go_live(agent, version, actor=actor)


def version_rollback(
    *, agent: Agent, version: AgentVersion, actor, reason: str = ""
) -> AgentVersion:
    """Restore `version`'s behaviour in one action: the agent's row takes its config again and
    a new version (a rollback of it) serves every run from now on. Tools, knowledge bases and
    agents deleted since are left out, and said so in the new version's changes."""
    if version.agent_id != agent.pk:
        raise VersionError(f"v{version.number} is not a version of {agent.name}")
    if version.route_id is None:
        raise VersionError(f"v{version.number}'s model route was deleted: it cannot be restored")
    config = version.config
    with transaction.atomic():
        _, head_id, head_config = _current(agent.pk, lock=True)
        fields = {name: config[name] for name in SCALARS}
        fields["confidence_threshold"] = Decimal(config["confidence_threshold"])
        Agent.objects.filter(pk=agent.pk).update(route_id=config["route"], **fields)
        for name, value in fields.items():
            setattr(agent, name, value)
        agent.route_id = config["route"]
        agent.tools.set(Tool.objects.filter(pk__in=config["tools"]))
        agent.knowledge_bases.set(KnowledgeBase.objects.filter(pk__in=config["knowledge_bases"]))
        agent.delegates.set(Agent.objects.filter(pk__in=config["delegates"]))
        restored = _current(agent.pk)[0]
        live = Agent.objects.filter(pk=agent.pk).values_list("live_version", flat=True).get()
        if restored == head_config and live == head_id:
            # Raised inside the transaction: the writes above are undone.
            raise VersionError(f"{agent.name} does what v{version.number} did already")
        why = reason or f"Rolled back to v{version.number}"
        return _create(
            agent, restored, head_id, actor=actor, reason=why, release=True, rollback_of=version
        )


def version_serving(*, agent: Agent, conversation: Conversation | None) -> AgentVersion:
    """The version that serves a new run of `agent` in `conversation` (None: not saved yet): a
    release's candidate for the conversations it was given, else the live version. A change to
    the agent that no version holds yet is recorded first (OUTSIDE); so is a first version.
    Such a change serves at once only if the version it changes served (an edit in place, as
    before versions): on top of a draft or a release's candidate it is a draft too, never
    released by a run's start. Two queries when nothing changed and no release runs; one more
    when one runs."""
    found = _config_row(agent.pk)
    config, head_id, head_config = _config_of(found), found["head_id"], found["head_config"]
    live_id = found["live_version_id"]
    if head_config != config:
        recorded = version_record(agent=agent, actor=None, reason=OUTSIDE, release=None)
        if recorded is not None and recorded.pk == agent.live_version_id:
            return recorded
        live_id = Agent.objects.filter(pk=agent.pk).values_list("live_version", flat=True).get()
    if found["releasing"]:
        from agents.releases import release_candidate

        candidate = release_candidate(agent=agent, conversation=conversation)
        if candidate is not None:
            return candidate
    # The live version; or, if none is (a release rolled back the first), the newest.
    served = AgentVersion.objects.select_related("route")
    return served.get(pk=live_id or head_id)


def version_agent(agent: Agent, version: AgentVersion | None) -> Agent:
    """`agent` as `version` configures it: a copy (never saved) whose behaviour fields are the
    version's, with `served` set to the version for served_ids. None: the agent as it is."""
    if version is None:
        return agent
    meta = Agent._meta
    names = [f.attname for f in meta.concrete_fields]
    served = Agent.from_db(agent._state.db, names, [getattr(agent, n) for n in names])
    config = version.config
    for name in SCALARS:
        setattr(served, name, config[name])
    served.confidence_threshold = Decimal(config["confidence_threshold"])
    route = version.route
    if route is None:
        raise VersionError(f"{agent.name} v{version.number}'s model route was deleted")
    served.route = route
    served.served = version  # type: ignore[attr-defined]
    return served


def served_ids(agent: Agent, field: str) -> list[int]:
    """The ids of the tools, knowledge bases or delegates (`field`) of the version serving this
    run (version_agent), or of the agent as it is."""
    served = getattr(agent, "served", None)
    if served is not None:
        return list(served.config[field])
    return list(getattr(agent, field).values_list("pk", flat=True))


def version_changes(before: dict | None, after: dict) -> list[dict]:
    """What differs from `before` to `after` (two configs), in people's words: names, not ids."""
    names = _names([before or {}, after])
    changes = []
    for field in BEHAVIOUR:
        old = (before or {}).get(field)
        new = after.get(field)
        if before is not None and old == new:
            continue
        changes.append(
            {
                "field": field,
                "label": LABELS[field],
                "before": _readable(field, old, names) if before is not None else None,
                "after": _readable(field, new, names),
            }
        )
    return changes


def _names(configs: list[dict]) -> dict[str, dict[int, str]]:
    ids: dict[str, set[int]] = {f: set() for f in RELATED}
    for config in configs:
        for field in RELATED:
            value = config.get(field)
            if value is None:
                continue
            ids[field].update(value if isinstance(value, list) else [value])
    return {
        "route": dict(ModelRoute.objects.filter(pk__in=ids["route"]).values_list("pk", "name")),
        "tools": dict(Tool.objects.filter(pk__in=ids["tools"]).values_list("pk", "name")),
        "knowledge_bases": dict(
            KnowledgeBase.objects.filter(pk__in=ids["knowledge_bases"]).values_list("pk", "name")
        ),
        "delegates": dict(Agent.objects.filter(pk__in=ids["delegates"]).values_list("pk", "slug")),
    }


def _readable(field: str, value: Any, names: dict[str, dict[int, str]]) -> Any:
    if field not in RELATED or value is None:
        return value
    if isinstance(value, list):
        return sorted(names[field].get(pk, f"#{pk} (deleted)") for pk in value)
    return names[field].get(value, f"#{value} (deleted)")


# Reading versions: the console's versions page and diff, the API's list -----------------------


def versions_listed(agent: Agent) -> QuerySet[AgentVersion]:
    """The agent's versions, newest first, each with its author, the version it restored and
    `served`, the number of runs it served: one query."""
    return (
        AgentVersion.objects.filter(agent_id=agent.pk)
        .select_related("created_by", "rollback_of")
        .annotate(served=Count("runs"))
        .order_by("-number")
    )


def versions_live_and_newest(agent: Agent) -> tuple[AgentVersion | None, AgentVersion | None]:
    """The version that serves the agent's runs and its newest (a draft, if they differ): one
    query."""
    newest = AgentVersion.objects.filter(agent_id=agent.pk).order_by("-number").values("pk")[:1]
    found = list(
        AgentVersion.objects.filter(agent_id=agent.pk).filter(
            Q(pk=agent.live_version_id) | Q(pk=Subquery(newest))
        )
    )
    live = next((v for v in found if v.pk == agent.live_version_id), None)
    return live, max(found, key=lambda v: v.number, default=None)


def config_readable(configs: list[dict]) -> list[dict[str, Any]]:
    """Each config with its routes, tools, knowledge bases and delegates by name (deleted ones
    as `#<id> (deleted)`), lists sorted: four queries for all of them."""
    names = _names(configs)
    return [{f: _readable(f, config.get(f), names) for f in BEHAVIOUR} for config in configs]


@dataclass
class FieldDiff:
    """One field of two versions side by side: before and after in people's words, what a list
    lost and gained, and for the system prompt its lines (`lines`: LineRow)."""

    field: str
    label: str
    before: Any
    after: Any
    changed: bool
    removed: list[str] = dataclasses.field(default_factory=list)
    added: list[str] = dataclasses.field(default_factory=list)
    lines: list[LineRow] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class LineRow:
    """A row of a side-by-side line diff: `op` is difflib's (equal, replace, delete, insert);
    a side is (line number, text), or None where that side has no line."""

    op: str
    left: tuple[int, str] | None
    right: tuple[int, str] | None


def version_diff(before: AgentVersion, after: AgentVersion) -> list[FieldDiff]:
    """Every field of two versions side by side, the changed ones marked."""
    old, new = config_readable([before.config, after.config])
    rows = []
    for name in BEHAVIOUR:
        row = FieldDiff(name, LABELS[name], old[name], new[name], old[name] != new[name])
        if isinstance(old[name], list):
            row.removed = [x for x in old[name] if x not in new[name]]
            row.added = [x for x in new[name] if x not in old[name]]
        if name == "system_prompt" and row.changed:
            row.lines = line_diff(old[name] or "", new[name] or "")
        rows.append(row)
    return rows


def line_diff(before: str, after: str) -> list[LineRow]:
    """`before` and `after` side by side, line by line (difflib)."""
    a, b = before.splitlines(), after.splitlines()
    rows = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        left = [(n + 1, a[n]) for n in range(i1, i2)]
        right = [(n + 1, b[n]) for n in range(j1, j2)]
        rows += [LineRow(op, x, y) for x, y in zip_longest(left, right)]
    return rows
