"""Who may do what to which object: the one place that answers it (DESIGN.md §6, STYLE.md 7).

A user may `action` an object when, and only when:
- the user is signed in and active,
- no denial names the object and action for the user or any of the user's groups (deny wins
  over every grant, superuser status included),
- and one of these grants it: superuser status; the object permission (guardian) given to the
  user or to one of the user's groups; the model-wide permission given to either (the same
  permission, on the model in Django's admin, means every object); ownership, for models that
  name an owner field (`governed_owner_field`).

`restrict(queryset, user, action)` is that rule as a queryset filter, one SQL statement with the
grants and denials as subqueries; every list filters through it, and the per-resource checks
below are `restrict(...).get(pk=...)`, so a list and a check can never disagree. A check that
fails raises `NoAccess`, with the same message whether the object is missing or forbidden.
"""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth.models import Permission
from django.db.models import CharField, Exists, Model, OuterRef, Q, QuerySet
from django.db.models.functions import Cast
from guardian.models import GroupObjectPermission, UserObjectPermission

from governance.models import AccessDenial, Action


class NoAccess(Exception):
    """The object does not exist or the user may not act on it; the caller cannot tell which."""


def is_active(user) -> bool:
    return bool(user is not None and getattr(user, "is_active", False) and user.pk)


def codename(model: type[Model], action: str) -> str:
    """The permission that grants `action` on `model`: use_agent, read_knowledgebase..."""
    name = f"{action}_{model._meta.model_name}"
    declared = {code for code, _ in model._meta.permissions}
    if name not in declared:
        raise ValueError(f"{model._meta.label} declares no {name!r} permission")
    return name


def restrict(queryset: QuerySet, user, action: str) -> QuerySet:
    """The rows of `queryset` that `user` may `action` (see the module docstring)."""
    model = queryset.model
    code = codename(model, action)
    if not is_active(user):
        return queryset.none()
    opts = model._meta
    same_model = {"content_type__app_label": opts.app_label, "content_type__model": opts.model_name}
    denied = Exists(
        AccessDenial.objects.filter(object_id=OuterRef("pk"), action=action, **same_model).filter(
            Q(user=user.pk) | Q(group__user=user.pk)
        )
    )
    restricted = queryset.filter(~denied)
    if user.is_superuser:
        return restricted
    permission = {"permission__codename": code, **same_model}
    object_pk = Cast(OuterRef("pk"), CharField())
    granted = (
        Exists(UserObjectPermission.objects.filter(user=user.pk, object_pk=object_pk, **permission))
        | Exists(
            GroupObjectPermission.objects.filter(
                group__user=user.pk, object_pk=object_pk, **permission
            )
        )
        | Exists(
            Permission.objects.filter(codename=code, **same_model).filter(
                Q(user=user.pk) | Q(group__user=user.pk)
            )
        )
    )
    owner = getattr(model, "governed_owner_field", None)
    if owner:
        granted |= Q(**{owner: user.pk})
    return restricted.filter(granted)


def may(user, obj: Model, action: str) -> bool:
    """Whether `user` may `action` the saved object `obj` (one query)."""
    return restrict(type(obj)._default_manager.filter(pk=obj.pk), user, action).exists()


def _one(label: str, noun: str, user, pk, action: str) -> Model:
    model = apps.get_model(label)
    codename(model, action)  # a wrong action is the caller's bug, not a denial
    try:
        return restrict(model._default_manager.all(), user, action).get(pk=pk)
    except (model.DoesNotExist, ValueError, TypeError):
        raise NoAccess(f"no such {noun}") from None


def access_agent(user, agent_id, action: str = Action.USE):
    """The agent `user` may use, or NoAccess."""
    return _one("agents.Agent", "agent", user, agent_id, action)


def access_tool(user, tool_id, action: str = Action.USE):
    """The tool `user` may use, or NoAccess."""
    return _one("tools.Tool", "tool", user, tool_id, action)


def access_knowledge_base(user, knowledge_base_id, action: str = Action.READ):
    """The knowledge base `user` may read, or NoAccess."""
    return _one("agents.KnowledgeBase", "knowledge base", user, knowledge_base_id, action)


def access_route(user, route_id, action: str = Action.USE):
    """The model route `user` may use, or NoAccess."""
    return _one("agents.ModelRoute", "model route", user, route_id, action)
