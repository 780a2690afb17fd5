"""Who may do what to which object: the one place that answers it (DESIGN.md §6, STYLE.md 7).

A user may `action` an object when, and only when:
- the user is signed in and active,
- no denial names the object and action for the user or any of the user's groups (deny wins
  over every grant, superuser status included),
- and one of these grants it: superuser status; the object permission (guardian) given to the
  user or to one of the user's groups; the model-wide permission given to either (the same
  permission, on the model in Django's admin, means every object); ownership, for models that
  name an owner field (`governed_owner_field`).
- A private object (models that name a `governed_private_field`, an object where that field is
  set: a conversation's own knowledge base) is its owner's alone: ownership is the only grant
  that counts for it, not superuser status, nor any permission.

`restrict(queryset, user, action)` is that rule as a queryset filter, one SQL statement with the
grants and denials as subqueries; every list filters through it, and the per-resource checks
below are `restrict(...).get(pk=...)`, so a list and a check can never disagree. A check that
fails raises `NoAccess`, with the same message whether the object is missing or forbidden.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard, TypeVar, cast

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.models import Field, Model, QuerySet
from django.db.models.expressions import RawSQL

from governance.models import Action

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

# Who asks: a signed-in user, the anonymous one, or nobody (none of them may do anything).
AnyUser: TypeAlias = "User | AnonymousUser | None"

_Rows = TypeVar("_Rows", bound=QuerySet[Any])  # restrict() keeps the queryset's class


class NoAccess(Exception):
    """The object does not exist or the user may not act on it; the caller cannot tell which."""


def is_active(user: AnyUser) -> TypeGuard[User]:
    return bool(user is not None and getattr(user, "is_active", False) and user.pk)


def codename(model: type[Model], action: str) -> str:
    """The permission that grants `action` on `model`: use_agent, read_knowledgebase..."""
    name = f"{action}_{model._meta.model_name}"
    declared = {code for code, _ in model._meta.permissions}
    if name not in declared:
        raise ValueError(f"{model._meta.label} declares no {name!r} permission")
    return name


def restrict(queryset: _Rows, user: AnyUser, action: str) -> _Rows:
    """The rows of `queryset` that `user` may `action` (see the module docstring).

    One uncorrelated subquery of the ids allowed, written in SQL: the ORM took 2.6 ms to
    build the same filter from Exists() expressions on every call (bench/runtime_overhead.py
    runs three of these a run); this builds in microseconds and plans in under one."""
    if not is_active(user):
        codename(queryset.model, action)
        return queryset.none()
    return queryset.filter(pk__in=RawSQL(*allowed_ids(queryset.model, user, action)))


def allowed_ids(model: type[Model], user: User, action: str) -> tuple[str, list[object]]:
    """`restrict` as SQL and its parameters: a query of the ids of `model` that the active
    `user` may `action`, for a statement that asks several things at once."""
    code = codename(model, action)
    content_type = ContentType.objects.get_for_model(model)  # cached per process
    sql, names = _allowed_sql(model, superuser=user.is_superuser)
    values = {"ct": content_type.pk, "action": action, "code": code, "user": user.pk}
    return sql, [values[name] for name in names]


@functools.cache
def _allowed_sql(model: type[Model], *, superuser: bool) -> tuple[str, list[str]]:
    """The SQL, with positional placeholders (the ORM's query carries a list of parameters),
    and the names of the values they stand for, in order."""
    table, pk = model._meta.db_table, model._meta.pk.column
    rule = _rule(model, user="%(user)s", superuser="TRUE" if superuser else None)
    return _positional(f"SELECT o.{pk} FROM {table} o WHERE {rule}")


def audience_ids(obj: Model, action: str) -> set[int]:
    """The ids of the users who may `action` the saved object `obj` now: the rule of `restrict`
    asked the other way round (every active user against one object), in one statement."""
    model = type(obj)
    sql, names = _audience_sql(model)
    values = {
        "ct": ContentType.objects.get_for_model(model).pk,
        "action": action,
        "code": codename(model, action),
        "object": obj.pk,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, [values[name] for name in names])
        return {row[0] for row in cursor.fetchall()}


@functools.cache
def _audience_sql(model: type[Model]) -> tuple[str, list[str]]:
    table, pk = model._meta.db_table, model._meta.pk.column
    users = get_user_model()._meta.db_table
    rule = _rule(model, user="u.id", superuser="u.is_superuser")
    return _positional(
        f"SELECT u.id FROM {users} u JOIN {table} o ON o.{pk} = %(object)s "
        f"WHERE u.is_active AND {rule}"
    )


def _positional(named: str) -> tuple[str, list[str]]:
    names = re.findall(r"%\((\w+)\)s", named)
    return re.sub(r"%\((\w+)\)s", "%s", named), names


def _rule(model: type[Model], *, user: str, superuser: str | None) -> str:
    """Whether the user `user` (an SQL expression) may act on the row `o`: the module
    docstring's rule. `superuser` is "TRUE" when the user is known to be one, an expression to
    ask, or None when the user is known not to be."""
    pk = model._meta.pk.column
    groups = f"SELECT group_id FROM auth_user_groups WHERE user_id = {user}"
    permission = (
        "SELECT id FROM auth_permission WHERE content_type_id = %(ct)s AND codename = %(code)s"
    )
    denied = f"""EXISTS (SELECT 1 FROM governance_accessdenial d
        WHERE d.content_type_id = %(ct)s AND d.object_id = o.{pk} AND d.action = %(action)s
        AND (d.user_id = {user} OR d.group_id IN ({groups})))"""
    private = _private_rule(model, user=user)
    if superuser == "TRUE":
        return f"NOT {denied} AND (TRUE)" if private is None else f"NOT {denied} AND {private}"
    grants = [superuser] if superuser else []
    grants += [
        f"""EXISTS (SELECT 1 FROM guardian_userobjectpermission p
            WHERE p.content_type_id = %(ct)s AND p.object_pk = o.{pk}::text
            AND p.user_id = {user} AND p.permission_id IN ({permission}))""",
        f"""EXISTS (SELECT 1 FROM guardian_groupobjectpermission p
            WHERE p.content_type_id = %(ct)s AND p.object_pk = o.{pk}::text
            AND p.group_id IN ({groups}) AND p.permission_id IN ({permission}))""",
        f"""EXISTS (SELECT 1 FROM auth_user_user_permissions up
            WHERE up.user_id = {user} AND up.permission_id IN ({permission}))""",
        f"""EXISTS (SELECT 1 FROM auth_group_permissions gp
            WHERE gp.group_id IN ({groups}) AND gp.permission_id IN ({permission}))""",
    ]
    owner = getattr(model, "governed_owner_field", None)
    if owner:
        column = cast("Field[Any, Any]", model._meta.get_field(owner)).column  # the user's key
        grants.append(f"o.{column} = {user}")
    granted = " OR ".join(f"({grant})" for grant in grants)
    if private is not None:
        return f"NOT {denied} AND {private} AND ({granted})"
    return f"NOT {denied} AND ({granted})"


def _private_rule(model: type[Model], *, user: str) -> str | None:
    """For a model with private objects: the row is not private, or `user` owns it."""
    private = getattr(model, "governed_private_field", None)
    if not private:
        return None
    owner = getattr(model, "governed_owner_field", None)
    if not owner:
        raise ValueError(f"{model._meta.label}: a private object needs an owner field")
    flag = cast("Field[Any, Any]", model._meta.get_field(private)).column
    column = cast("Field[Any, Any]", model._meta.get_field(owner)).column
    return f"(o.{flag} IS NULL OR o.{column} = {user})"


def may(user: AnyUser, obj: Model, action: str) -> bool:
    """Whether `user` may `action` the saved object `obj` (one query)."""
    return restrict(type(obj)._default_manager.filter(pk=obj.pk), user, action).exists()


def _one(label: str, noun: str, user: AnyUser, pk: object, action: str) -> Any:
    model = apps.get_model(label)
    codename(model, action)  # a wrong action is the caller's bug, not a denial
    try:
        return restrict(model._default_manager.all(), user, action).get(pk=pk)
    except (model.DoesNotExist, ValueError, TypeError):
        raise NoAccess(f"no such {noun}") from None


# The access_* checks answer Any: their models live in the apps above governance, which it
# never names (DESIGN.md §2); each caller knows which model it asked for.


def access_agent(user: AnyUser, agent_id: object, action: str = Action.USE) -> Any:
    """The agent `user` may use, or NoAccess."""
    return _one("agents.Agent", "agent", user, agent_id, action)


def access_tool(user: AnyUser, tool_id: object, action: str = Action.USE) -> Any:
    """The tool `user` may use, or NoAccess."""
    return _one("tools.Tool", "tool", user, tool_id, action)


def access_knowledge_base(
    user: AnyUser, knowledge_base_id: object, action: str = Action.READ
) -> Any:
    """The knowledge base `user` may read, or NoAccess."""
    return _one("agents.KnowledgeBase", "knowledge base", user, knowledge_base_id, action)


def access_route(user: AnyUser, route_id: object, action: str = Action.USE) -> Any:
    """The model route `user` may use, or NoAccess."""
    return _one("agents.ModelRoute", "model route", user, route_id, action)
