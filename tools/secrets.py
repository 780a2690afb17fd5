"""Secrets at rest: Fernet tokens under the keys of WARDEN_ENCRYPTION_KEY, and the writes that
store, re-encrypt and delete them.

The keys are a list, newest first (MultiFernet): the first encrypts, any of them decrypts, so a
new key is prepended, `manage.py secrets_rotate` re-encrypts every secret with it, and then the
old key can be dropped. The MultiFernet is built from settings on each call (it is cheap), so a
changed setting takes effect at once.

A value never leaves this module except through `decrypt` (and `Secret.reveal`, for executors):
no message, log line or audit event carries a value, a token or a key.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from audit.services import Target, audit_record
from tools.models import Secret, SecretKind


class SecretError(Exception):
    """A stored secret cannot be read or written; the message never holds its value."""


def _keys() -> list[str]:
    keys = settings.WARDEN_ENCRYPTION_KEY
    if isinstance(keys, str):
        keys = keys.split(",")
    keys = [key.strip() for key in keys if key.strip()]
    if not keys:
        raise ImproperlyConfigured(
            "WARDEN_ENCRYPTION_KEY is not set, so secrets cannot be stored or read: set it to a "
            "Fernet key (see README, Secrets)"
        )
    return keys


def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key) for key in _keys()])


def _unreadable(label: str) -> SecretError:
    return SecretError(
        f"{label} cannot be decrypted with the configured WARDEN_ENCRYPTION_KEY "
        "(was the key rotated away?)"
    )


def encrypt(plaintext: str) -> str:
    """A Fernet token of `plaintext` under the newest key."""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str, *, label: str = "the secret") -> str:
    """The plaintext of `token`, read with whichever configured key made it."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise _unreadable(label) from None


def rotate(token: str, *, label: str = "the secret") -> str:
    """`token` re-encrypted under the newest key (its original timestamp kept)."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise _unreadable(label) from None


def uses_newest_key(token: str) -> bool:
    try:
        Fernet(_keys()[0]).decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def value_problem(*, kind: str, value: str) -> str | None:
    """Why `value` cannot be stored as a secret of `kind`, or None; never quotes the value."""
    if value == "":
        return "A secret's value cannot be empty."
    if kind == SecretKind.BASIC and ":" not in value:
        return "A basic auth secret is user:password (a colon is missing)."
    return None


def secret_set(
    *,
    name: str,
    value: str | None,
    actor: Any,
    kind: str | None = None,
    description: str | None = None,
) -> Secret:
    """Create or update the secret `name`; `value` None keeps the stored value (an update of
    kind or description only). Audited as ``secret.set`` when a value is stored, else
    ``secret.updated``; the event holds the name and kind, never the value."""
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(name=name).first()
        creating = secret is None
        if secret is None:
            if value is None:
                raise SecretError(f"secret {name!r} does not exist yet: give it a value")
            secret = Secret(name=name, kind=kind or SecretKind.BEARER)
        changed = []
        if kind is not None and kind != secret.kind:
            secret.kind = kind
            changed.append("kind")
        if description is not None and description != secret.description:
            secret.description = description
            changed.append("description")
        if value is not None:
            problem = value_problem(kind=secret.kind, value=value)
            if problem:
                raise SecretError(problem)
            secret.set_value(value)
            secret.value_set_at = timezone.now()
            changed += ["ciphertext", "value_set_at"]
        if not creating and not changed:
            return secret
        secret.full_clean(validate_unique=False, validate_constraints=False)
        if creating:
            secret.save()
        else:
            secret.save(update_fields=[*changed, "updated_at"])
        audit_record(
            actor=actor,
            action="secret.set" if value is not None else "secret.updated",
            target=Target.of(secret),
            data={"name": secret.name, "kind": secret.kind},
        )
    return secret


def secret_rotate(*, secret_id: int, actor: Any) -> bool:
    """Re-encrypt one secret under the newest key, in its own transaction; False when it
    already was. Audited as ``secret.rotated``. Raises SecretError when no key reads it."""
    with transaction.atomic():
        secret = Secret.objects.select_for_update().get(pk=secret_id)
        if uses_newest_key(secret.ciphertext):
            return False
        secret.ciphertext = rotate(secret.ciphertext, label=f"secret {secret.name!r}")
        secret.rotated_at = timezone.now()
        secret.save(update_fields=["ciphertext", "rotated_at"])
        audit_record(
            actor=actor,
            action="secret.rotated",
            target=Target.of(secret),
            data={"name": secret.name, "kind": secret.kind},
        )
    return True


def secret_delete(*, secret: Secret, actor: Any) -> None:
    with transaction.atomic():
        target = Target.of(secret)
        data = {"name": secret.name, "kind": secret.kind}
        secret.delete()
        audit_record(actor=actor, action="secret.deleted", target=target, data=data)
