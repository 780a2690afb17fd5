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

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Model, Q
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm, remove_perm

from governance import roles
from governance.access import audience_ids, codename, restrict
from governance.models import AccessDenial

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


def token_of(holder) -> str:
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


def explain(obj: Model, action: str) -> Access:
    """Who may `action` `obj` and why, from a handful of queries whatever the numbers."""
    model = type(obj)
    content_type = ContentType.objects.get_for_model(model)
    permission = Permission.objects.get(content_type=content_type, codename=codename(model, action))
    denial_rows = list(
        AccessDenial.objects.filter(
            content_type=content_type, object_id=obj.pk, action=action
        ).values_list("user_id", "group_id")
    )
    denied_users = {u for u, _ in denial_rows if u}
    denied_groups = {g for _, g in denial_rows if g}
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
    owner_id = getattr(obj, f"{owner_field}_id", None) if owner_field else None

    named = denied_groups | group_grants | every_groups
    groups = {g.pk: g for g in Group.objects.filter(pk__in=named)}
    User = get_user_model()
    members: dict[int, set[int]] = defaultdict(set)
    for user_id, group_id in User.groups.through.objects.filter(
        group_id__in=named, user__is_active=True
    ).values_list("user_id", "group_id"):
        members[group_id].add(user_id)
    reached = denied_users | direct | every_users | {owner_id} - {None}
    reached |= set().union(*members.values()) if members else set()
    # The people reached (active) and the users a grant or denial names (inactive too: a row
    # of the tables below), in one query.
    named_users = denied_users | direct | every_users
    candidates = User.objects.filter(
        Q(is_active=True, pk__in=reached)
        | Q(is_active=True, is_superuser=True)
        | Q(pk__in=named_users)
    )
    everyone = {u.pk: u for u in candidates}
    users = {pk: u for pk, u in everyone.items() if u.is_active}
    groups_of: dict[int, list[int]] = defaultdict(list)
    for group_id, ids in members.items():
        for user_id in ids:
            groups_of[user_id].append(group_id)

    def via(group_id: int) -> Reason:
        group = groups[group_id]
        return Reason(kind_of(group), group.name)

    allowed = audience_ids(obj, action)
    people = []
    for user in users.values():
        person = Person(user.pk, user.get_username(), user.get_full_name())
        if user.pk in denied_users:
            person.denials.append(Reason("direct"))
        person.denials += [via(g) for g in sorted(groups_of[user.pk]) if g in denied_groups]
        if user.is_superuser:
            person.grants.append(Reason("superuser"))
        if user.pk in direct:
            person.grants.append(Reason("direct"))
        person.grants += [via(g) for g in sorted(groups_of[user.pk]) if g in group_grants]
        if user.pk in every_users:
            person.grants.append(Reason("every"))
        person.grants += [
            Reason("every", f"{kind_of(groups[g])} {groups[g].name}")
            for g in sorted(groups_of[user.pk])
            if g in every_groups
        ]
        if user.pk == owner_id:
            person.grants.append(Reason("owner"))
        person.allowed = user.pk in allowed
        people.append(person)
    people.sort(key=lambda p: (not p.denials, p.allowed, p.username))

    def holder_of(user_id=None, group_id=None, every=False) -> Holder:
        if user_id is not None:
            user = everyone[user_id]
            return Holder("user", user_id, user.get_username(), int(user.is_active), every)
        group = groups[group_id]
        return Holder(kind_of(group), group_id, group.name, len(members[group_id]), every)

    return Access(
        denials=[holder_of(user_id=u) for u in sorted(denied_users)]
        + [holder_of(group_id=g) for g in sorted(denied_groups)],
        grants=[holder_of(user_id=u) for u in sorted(direct)]
        + [holder_of(group_id=g) for g in sorted(group_grants)]
        + [holder_of(user_id=u, every=True) for u in sorted(every_users)]
        + [holder_of(group_id=g, every=True) for g in sorted(every_groups)],
        superusers=sum(1 for u in users.values() if u.is_superuser),
        owner=users[owner_id].get_username() if owner_id in users else None,
        people=people,
    )


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


def _make(obj: Model, action: str, operation: str, holder) -> None:
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
    obj: Model, action: str, operation: str, holder, *, before: Access | None = None
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


def holdings(holder, queryset, action: str) -> list[Holding]:
    """Each object of `queryset` that a grant or a denial reaches `holder` (a user or a group)
    by, denied first: the reverse of `explain`."""
    model = queryset.model
    content_type = ContentType.objects.get_for_model(model)
    permission = Permission.objects.get(content_type=content_type, codename=codename(model, action))
    is_group = isinstance(holder, Group)
    groups = {holder.pk: holder} if is_group else {g.pk: g for g in holder.groups.all()}
    reasons: dict[int, Holding] = {}

    def at(pk) -> Holding:
        pk = int(pk)
        return reasons.setdefault(pk, Holding(obj=None, allowed=None))

    if not is_group:
        for pk in UserObjectPermission.objects.filter(
            content_type=content_type, permission=permission, user=holder
        ).values_list("object_pk", flat=True):
            at(pk).grants.append(Reason("direct"))
        owner = getattr(model, "governed_owner_field", None)
        if owner:
            for pk in queryset.filter(**{owner: holder}).values_list("pk", flat=True):
                at(pk).grants.append(Reason("owner"))
    for pk, group_id in GroupObjectPermission.objects.filter(
        content_type=content_type, permission=permission, group_id__in=groups
    ).values_list("object_pk", "group_id"):
        group = groups[group_id]
        at(pk).grants.append(Reason(kind_of(group), group.name))
    every = [
        Reason("every", f"{kind_of(g)} {g.name}")
        for g in permission.group_set.all()
        if g.pk in groups
    ]
    if not is_group and permission.user_set.filter(pk=holder.pk).exists():
        every.insert(0, Reason("every"))
    if not is_group and holder.is_superuser:
        every.insert(0, Reason("superuser"))
    everything = bool(every)
    denials = AccessDenial.objects.filter(content_type=content_type, action=action)
    denials = denials.filter(Q(group_id__in=groups) | (Q() if is_group else Q(user=holder)))
    for object_id, user_id, group_id in denials.values_list("object_id", "user_id", "group_id"):
        if user_id:
            at(object_id).denials.append(Reason("direct"))
        elif group_id in groups:
            group = groups[group_id]
            at(object_id).denials.append(Reason(kind_of(group), group.name))

    objects = queryset if everything else queryset.filter(pk__in=list(reasons))
    allowed = (
        set() if is_group else set(restrict(objects, holder, action).values_list("pk", flat=True))
    )
    found = []
    for obj in objects.order_by("pk"):
        holding = reasons.get(obj.pk) or Holding(obj=None, allowed=None)
        holding.obj = obj
        holding.grants = every + holding.grants
        holding.allowed = None if is_group else obj.pk in allowed
        found.append(holding)
    found.sort(key=lambda h: (not h.denials, str(h.obj).lower()))
    return found
