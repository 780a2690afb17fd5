"""Grants and denials: each one audited in the transaction that makes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Model
from guardian.shortcuts import assign_perm, remove_perm

from audit.services import Actor, Target, audit_record
from governance.access import codename
from governance.models import AccessDenial

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from governance.access import AnyUser


def _holder(holder: User | Group) -> dict[str, User | Group]:
    return {"group": holder} if isinstance(holder, Group) else {"user": holder}


def _record(
    actor: AnyUser | Actor, action: str, obj: Model, holder: User | Group, verb: str
) -> None:
    audit_record(
        actor=actor,
        action=f"access.{verb}",
        target=Target.of(obj),
        data={
            "action": action,
            "holder": {"type": "group" if isinstance(holder, Group) else "user", "id": holder.pk},
            "holder_name": str(holder),
        },
    )


def access_grant(*, obj: Model, holder: User | Group, action: str, actor: AnyUser | Actor) -> None:
    """Let `holder` (a user or a group) `action` the object."""
    with transaction.atomic():
        assign_perm(codename(type(obj), action), holder, obj)
        _record(actor, action, obj, holder, "granted")


def access_revoke(*, obj: Model, holder: User | Group, action: str, actor: AnyUser | Actor) -> None:
    """Take back the object permission `access_grant` gave (a denial is separate)."""
    with transaction.atomic():
        remove_perm(codename(type(obj), action), holder, obj)
        _record(actor, action, obj, holder, "revoked")


def access_deny(*, obj: Model, holder: User | Group, action: str, actor: AnyUser | Actor) -> None:
    """Deny `holder` the action on the object, whatever any grant says."""
    codename(type(obj), action)
    with transaction.atomic():
        AccessDenial.objects.get_or_create(
            content_type=ContentType.objects.get_for_model(obj),
            object_id=obj.pk,
            action=action,
            **_holder(holder),
            defaults={"created_by": actor if getattr(actor, "pk", None) else None},
        )
        _record(actor, action, obj, holder, "denied")


def access_undeny(*, obj: Model, holder: User | Group, action: str, actor: AnyUser | Actor) -> None:
    """Lift a denial; what grants say counts again."""
    with transaction.atomic():
        AccessDenial.objects.filter(
            content_type=ContentType.objects.get_for_model(obj),
            object_id=obj.pk,
            action=action,
            **_holder(holder),
        ).delete()
        _record(actor, action, obj, holder, "undenied")
