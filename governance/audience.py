"""Who may act on an object and why, and what a change to its grants would do: what the
Access page shows (governance.admin) before anyone changes anything.

Whether someone may is always the rule's own answer (`access.audience_ids`, the statement that
`restrict` runs the other way round); this module only says *why*, from the same tables, and
the tests hold the two to agreeing. A preview makes the change inside a savepoint, asks the
rule again and rolls back: what it says will happen is what the rule will answer.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Model, Q, QuerySet
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm, remove_perm

from governance import roles
from governance.access import audience_ids, codename, restrict
from governance.models import AccessDenial

if TYPE_CHECKING:
    from django.contrib.auth.models import User

GRANT, REVOKE, DENY, UNDENY = "grant", "revoke", "deny", "undeny"
OPERATIONS = (GRANT, REVOKE, DENY, UNDENY)


def kind_of(group: Group) -> str:
    """ "role" for the four role groups (DESIGN.md §6), "team" for every other group."""
    return "role" if group.name in roles.ROLE_GROUPS else "team"


@dataclass(frozen=True)
class Reason:
    """One grant or denial as it reaches a user: `source` is superuser, direct, group, team,
    every (the model-wide permission) or owner; `via` names the group or team."""

    source: str
    via: str = ""

    def __str__(self) -> str:
        return {
            "superuser": "superuser",
            "direct": "granted to them",
            "role": f"group {self.via}",
            "team": f"team {self.via}",
            "every": f"may on every one ({self.via or 'their own permission'})",
            "owner": "owner",
        }[self.source]


@dataclass
class Person:
    """A user whom a grant or a denial on the object reaches."""

    id: int
    username: str
    name: str
    allowed: bool = False
    grants: list[Reason] = field(default_factory=list)
    denials: list[Reason] = field(default_factory=list)


@dataclass
class Holder:
    """A grant or a denial as set: on a user, a group or a team, or model-wide."""

    kind: str  # user, role, team
    id: int
    name: str
    members: int = 1  # active users it reaches
    every: bool = False  # the model-wide permission, not a grant on this object

    @property
    def token(self) -> str:
        return f"{'user' if self.kind == 'user' else 'group'}:{self.id}"


def token_of(holder: User | Group) -> str:
    """How a picker names a user or a group ("user:7", "group:3"), as `Holder.token` does."""
    return f"{'group' if isinstance(holder, Group) else 'user'}:{holder.pk}"


@dataclass
class Access:
    """The object's access now: denials first, then grants, then each person reached."""

    denials: list[Holder]
    grants: list[Holder]
    superusers: int
    owner: str | None
    people: list[Person]  # denied first, then by name

    @property
    def allowed(self) -> set[int]:
        return {p.id for p in self.people if p.allowed}

    def fingerprint(self) -> str:
        """Changes whenever a grant, a denial or who is reached changes: a preview confirmed
        against a stale state is shown again rather than applied."""
        parts = [f"{h.token}:{h.every}:{h.members}" for h in self.denials + self.grants]
        parts += [f"{p.id}:{p.allowed}" for p in self.people]
        return hashlib.sha256("|".join(sorted(parts)).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Rows:
    """The grants and denials on one object for one action, as the tables hold them."""

    denied_users: set[int]
    denied_groups: set[int]
    direct: set[int]
    group_grants: set[int]
    every_users: set[int]
    every_groups: set[int]
    owner_id: int | None


def explain(obj: Model, action: str) -> Access:
    """Who may `action` `obj` and why, from a handful of queries whatever the numbers."""
    rows = _rows_on(obj=obj, action=action)
    named = rows.denied_groups | rows.group_grants | rows.every_groups
    groups = {g.pk: g for g in Group.objects.filter(pk__in=named)}
    members = _active_members(named)
    everyone = _users_named_or_reached(rows=rows, members=members)
    users = {pk: u for pk, u in everyone.items() if u.is_active}
    groups_of: dict[int, list[int]] = defaultdict(list)
    for group_id, ids in members.items():
        for user_id in ids:
            groups_of[user_id].append(group_id)
    allowed = audience_ids(obj, action)
    people = [
        _person(
            user=user,
            rows=rows,
            groups=groups,
            group_ids=sorted(groups_of[user.pk]),
            allowed=user.pk in allowed,
        )
        for user in users.values()
    ]
    people.sort(key=lambda p: (not p.denials, p.allowed, p.username))
    denials, grants = _holders(rows=rows, everyone=everyone, groups=groups, members=members)
    return Access(
        denials=denials,
        grants=grants,
        superusers=sum(1 for u in users.values() if u.is_superuser),
        owner=users[rows.owner_id].get_username() if rows.owner_id in users else None,
        people=people,
    )


def _rows_on(*, obj: Model, action: str) -> _Rows:
    """The denials, the grants on the object, the model-wide permission's holders and the owner."""
    model = type(obj)
    content_type = ContentType.objects.get_for_model(model)
    permission = Permission.objects.get(content_type=content_type, codename=codename(model, action))
    denial_rows = list(
        AccessDenial.objects.filter(
            content_type=content_type, object_id=obj.pk, action=action
        ).values_list("user_id", "group_id")
    )
    direct = set(
        UserObjectPermission.objects.filter(
            content_type=content_type, object_pk=str(obj.pk), permission=permission
        ).values_list("user_id", flat=True)
    )
    group_grants = set(
        GroupObjectPermission.objects.filter(
            content_type=content_type, object_pk=str(obj.pk), permission=permission
        ).values_list("group_id", flat=True)
    )
    every_users = set(permission.user_set.values_list("id", flat=True))
    every_groups = set(permission.group_set.values_list("id", flat=True))
    owner_field = getattr(model, "governed_owner_field", None)
    return _Rows(
        denied_users={u for u, _ in denial_rows if u},
        denied_groups={g for _, g in denial_rows if g},
        direct=direct,
        group_grants=group_grants,
        every_users=every_users,
        every_groups=every_groups,
        owner_id=getattr(obj, f"{owner_field}_id", None) if owner_field else None,
    )


def _active_members(named: set[int]) -> dict[int, set[int]]:
    """The active users of each named group, by group."""
    members: dict[int, set[int]] = defaultdict(set)
    for user_id, group_id in (
        get_user_model()
        .groups.through.objects.filter(group_id__in=named, user__is_active=True)
        .values_list("user_id", "group_id")
    ):
        members[group_id].add(user_id)
    return members


def _users_named_or_reached(*, rows: _Rows, members: dict[int, set[int]]) -> dict[int, Any]:
    """The people reached (active) and the users a grant or denial names (inactive too: a row
    of the Access page's tables), in one query."""
    reached = rows.denied_users | rows.direct | rows.every_users | {rows.owner_id} - {None}
    reached |= set().union(*members.values()) if members else set()
    named_users = rows.denied_users | rows.direct | rows.every_users
    candidates = get_user_model().objects.filter(
        Q(is_active=True, pk__in=reached)
        | Q(is_active=True, is_superuser=True)
        | Q(pk__in=named_users)
    )
    return {u.pk: u for u in candidates}


def _person(
    *, user: Any, rows: _Rows, groups: dict[int, Group], group_ids: list[int], allowed: bool
) -> Person:
    """One user's denials and grants on the object, each with where it comes from."""

    def via(group_id: int) -> Reason:
        group = groups[group_id]
        return Reason(kind_of(group), group.name)

    person = Person(user.pk, user.get_username(), user.get_full_name())
    if user.pk in rows.denied_users:
        person.denials.append(Reason("direct"))
    person.denials += [via(g) for g in group_ids if g in rows.denied_groups]
    if user.is_superuser:
        person.grants.append(Reason("superuser"))
    if user.pk in rows.direct:
        person.grants.append(Reason("direct"))
    person.grants += [via(g) for g in group_ids if g in rows.group_grants]
    if user.pk in rows.every_users:
        person.grants.append(Reason("every"))
    person.grants += [
        Reason("every", f"{kind_of(groups[g])} {groups[g].name}")
        for g in group_ids
        if g in rows.every_groups
    ]
    if user.pk == rows.owner_id:
        person.grants.append(Reason("owner"))
    person.allowed = allowed
    return person


def _holders(
    *,
    rows: _Rows,
    everyone: dict[int, Any],
    groups: dict[int, Group],
    members: dict[int, set[int]],
) -> tuple[list[Holder], list[Holder]]:
    """The denials and the grants as set: users before groups, on the object before model-wide."""

    def holder_of(
        user_id: int | None = None, group_id: int | None = None, every: bool = False
    ) -> Holder:
        if user_id is not None:
            user = everyone[user_id]
            return Holder("user", user_id, user.get_username(), int(user.is_active), every)
        group_id = cast(int, group_id)  # named when user_id is not
        group = groups[group_id]
        return Holder(kind_of(group), group_id, group.name, len(members[group_id]), every)

    denials = [holder_of(user_id=u) for u in sorted(rows.denied_users)] + [
        holder_of(group_id=g) for g in sorted(rows.denied_groups)
    ]
    grants = (
        [holder_of(user_id=u) for u in sorted(rows.direct)]
        + [holder_of(group_id=g) for g in sorted(rows.group_grants)]
        + [holder_of(user_id=u, every=True) for u in sorted(rows.every_users)]
        + [holder_of(group_id=g, every=True) for g in sorted(rows.every_groups)]
    )
    return denials, grants


@dataclass
class Preview:
    """What a change would do: who gains access, who loses it, and the groups and teams that
    would be left with no member who may (the change a confirmation is asked for)."""

    before: Access
    after: Access
    gained: list[Person]
    lost: list[Person]
    locked_out: list[Holder]  # groups and teams in which someone may now and nobody would
    everyone: bool  # everyone who may now would lose it

    @property
    def needs_confirmation(self) -> bool:
        return bool(self.locked_out) or self.everyone


def _make(obj: Model, action: str, operation: str, holder: User | Group) -> None:
    """The change itself, unaudited: only ever inside `preview`'s rolled-back savepoint (the
    audited services in governance.services make it for real)."""
    is_group = isinstance(holder, Group)
    where = {
        "content_type": ContentType.objects.get_for_model(obj),
        "object_id": obj.pk,
        "action": action,
        ("group" if is_group else "user"): holder,
    }
    if operation == GRANT:
        assign_perm(codename(type(obj), action), holder, obj)
    elif operation == REVOKE:
        remove_perm(codename(type(obj), action), holder, obj)
    elif operation == DENY:
        AccessDenial.objects.get_or_create(**where)
    elif operation == UNDENY:
        AccessDenial.objects.filter(**where).delete()
    else:
        raise ValueError(f"no such change: {operation!r}")


def preview(
    obj: Model, action: str, operation: str, holder: User | Group, *, before: Access | None = None
) -> Preview:
    """What `operation` (grant, revoke, deny, undeny) for `holder` (a user or a group) would
    change, the rule asked with the change made and then rolled back; `before` is
    `explain(obj, action)` if the caller has it already."""
    before = before or explain(obj, action)
    with transaction.atomic():
        _make(obj, action, operation, holder)
        after = explain(obj, action)
        transaction.set_rollback(True)
    was, will = before.allowed, after.allowed
    people = {p.id: p for p in before.people} | {p.id: p for p in after.people}
    after_people = {p.id: p for p in after.people}
    gained = [after_people[i] for i in sorted(will - was, key=lambda i: people[i].username)]
    lost = [
        after_people.get(i, people[i]) for i in sorted(was - will, key=lambda i: people[i].username)
    ]
    locked_out = _locked_out(was, will)
    return Preview(before, after, gained, lost, locked_out, everyone=bool(was) and not will)


def _locked_out(was: set[int], will: set[int]) -> list[Holder]:
    """Groups and teams with a member who may now and none who would after the change."""
    User = get_user_model()
    members: dict[int, set[int]] = defaultdict(set)
    for user_id, group_id in User.groups.through.objects.filter(
        user_id__in=was - will, user__is_active=True
    ).values_list("user_id", "group_id"):
        members[group_id].add(user_id)
    if not members:
        return []
    for user_id, group_id in User.groups.through.objects.filter(
        group_id__in=members, user__is_active=True
    ).values_list("user_id", "group_id"):
        members[group_id].add(user_id)
    found = []
    for group in Group.objects.filter(pk__in=members).order_by("name"):
        everyone = members[group.pk]
        if everyone & was and not everyone & will:
            found.append(Holder(kind_of(group), group.pk, group.name, len(everyone)))
    return found


@dataclass
class Holding:
    """One object as a user or group holds it: for a user, whether they may (the rule's
    answer) and why; for a group, what is set on the group (`allowed` None: each member's
    answer depends on their other groups too)."""

    obj: Model | None  # None only while holdings() collects the reasons
    allowed: bool | None
    grants: list[Reason] = field(default_factory=list)
    denials: list[Reason] = field(default_factory=list)
    url: str = ""


def holdings(holder: User | Group, queryset: QuerySet[Model], action: str) -> list[Holding]:
    """Each object of `queryset` that a grant or a denial reaches `holder` (a user or a group)
    by, denied first: the reverse of `explain`."""
    model = queryset.model
    content_type = ContentType.objects.get_for_model(model)
    permission = Permission.objects.get(content_type=content_type, codename=codename(model, action))
    groups = (
        {holder.pk: holder} if isinstance(holder, Group) else {g.pk: g for g in holder.groups.all()}
    )
    reasons: dict[int, Holding] = {}
    _object_grants(
        reasons,
        holder=holder,
        queryset=queryset,
        content_type=content_type,
        permission=permission,
        groups=groups,
    )
    every = _model_wide_grants(holder=holder, permission=permission, groups=groups)
    _object_denials(reasons, holder=holder, content_type=content_type, action=action, groups=groups)
    objects = queryset if every else queryset.filter(pk__in=list(reasons))
    allowed = (
        set()
        if isinstance(holder, Group)
        else set(restrict(objects, holder, action).values_list("pk", flat=True))
    )
    found = []
    for obj in objects.order_by("pk"):
        holding = reasons.get(obj.pk) or Holding(obj=None, allowed=None)
        holding.obj = obj
        holding.grants = every + holding.grants
        holding.allowed = None if isinstance(holder, Group) else obj.pk in allowed
        found.append(holding)
    found.sort(key=lambda h: (not h.denials, str(h.obj).lower()))
    return found


def _holding_of(reasons: dict[int, Holding], pk: int | str) -> Holding:
    return reasons.setdefault(int(pk), Holding(obj=None, allowed=None))


def _object_grants(
    reasons: dict[int, Holding],
    *,
    holder: User | Group,
    queryset: QuerySet[Model],
    content_type: ContentType,
    permission: Permission,
    groups: dict[int, Group],
) -> None:
    """The per-object grants reaching `holder`: its own, its ownership, its groups'."""
    if not isinstance(holder, Group):
        for pk in UserObjectPermission.objects.filter(
            content_type=content_type, permission=permission, user=holder
        ).values_list("object_pk", flat=True):
            _holding_of(reasons, pk).grants.append(Reason("direct"))
        owner = getattr(queryset.model, "governed_owner_field", None)
        if owner:
            for pk in queryset.filter(**{owner: holder}).values_list("pk", flat=True):
                _holding_of(reasons, pk).grants.append(Reason("owner"))
    for pk, group_id in GroupObjectPermission.objects.filter(
        content_type=content_type, permission=permission, group_id__in=groups
    ).values_list("object_pk", "group_id"):
        group = groups[group_id]
        _holding_of(reasons, pk).grants.append(Reason(kind_of(group), group.name))


def _model_wide_grants(
    *, holder: User | Group, permission: Permission, groups: dict[int, Group]
) -> list[Reason]:
    """The grants that reach every object of the model: superuser, the user's own, its groups'."""
    every = [
        Reason("every", f"{kind_of(g)} {g.name}")
        for g in permission.group_set.all()
        if g.pk in groups
    ]
    if not isinstance(holder, Group) and permission.user_set.filter(pk=holder.pk).exists():
        every.insert(0, Reason("every"))
    if not isinstance(holder, Group) and holder.is_superuser:
        every.insert(0, Reason("superuser"))
    return every


def _object_denials(
    reasons: dict[int, Holding],
    *,
    holder: User | Group,
    content_type: ContentType,
    action: str,
    groups: dict[int, Group],
) -> None:
    """The denials reaching `holder`: its own and its groups'."""
    denials = AccessDenial.objects.filter(content_type=content_type, action=action)
    denials = denials.filter(
        Q(group_id__in=groups) | (Q() if isinstance(holder, Group) else Q(user=holder))
    )
    for object_id, user_id, group_id in denials.values_list("object_id", "user_id", "group_id"):
        if user_id:
            _holding_of(reasons, object_id).denials.append(Reason("direct"))
        elif group_id in groups:
            group = groups[group_id]
            _holding_of(reasons, object_id).denials.append(Reason(kind_of(group), group.name))
