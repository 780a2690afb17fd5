"""Keeping secrets out of the audit trail: by the name of the key that holds them, and by the
shape of the text that carries them. Personal data (audit.pii: e-mail
addresses, phone numbers, cards, IBANs, SSNs) in the event's data becomes a keyed hash,
[EMAIL:3f9a...]: the trail is append-only and exported, so a value written once could never be
erased; the hash still tells two events about the same value apart from others."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from audit.pii import hash_key, pseudonymise

REDACTED = "[redacted]"

# A key names a secret when one of its words does ("client_secret", "X-Api-Key", "password1",
# "csrfmiddlewaretoken", "PGPASSWORD"), unless its last word says it is only about one: a count,
# a type, a time ("prompt_tokens", "token_count", "token_type", "password_changed_at").
_KEY_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_SECRET_WORDS = frozenset(
    [
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "token",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "signature",
        "apikey",
        "otp",
        "session",
        "sessionid",
        "csrf",
        "bearer",
    ]
)
_SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "apikey", "sessionid")
_KEY_QUALIFIERS = frozenset(
    ["api", "private", "secret", "access", "signing", "encryption", "license"]
)
_ABOUT_WORDS = frozenset(
    [
        "count",
        "counts",
        "total",
        "tokens",
        "limit",
        "limits",
        "usage",
        "used",
        "remaining",
        "type",
        "at",
        "expires",
        "expiry",
        "ttl",
        "length",
        "changed",
        "set",
        "required",
    ]
)
# Secrets inside text: bearer tokens, credentials in URLs, secret query parameters.
_TEXT_SECRETS = (
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/=]{8,}"), r"\1 [redacted]"),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1[redacted]@"),
    (
        re.compile(
            r"(?i)([?&;](?:access_token|refresh_token|id_token|token|api_key|apikey|key|"
            r"password|secret|client_secret|signature|sig)=)[^&;#\s]+"
        ),
        r"\1[redacted]",
    ),
)


_TEXT_SECRET_WORDS = re.compile(r"(?i)bearer|basic|token")  # the first pattern's words


@functools.lru_cache(maxsize=4096)  # keys repeat: every event of a kind has the same ones
def is_secret_key(key: str) -> bool:
    words = [word.lower() for word in _KEY_WORDS.findall(key)]
    if not words or (len(words) > 1 and words[-1] in _ABOUT_WORDS):
        return False
    for index, word in enumerate(words):
        if word in _SECRET_WORDS or word.endswith(_SECRET_SUFFIXES):
            return True
        if word == "key" and index and words[index - 1] in _KEY_QUALIFIERS:
            return True
    return False


def scrub(text: str) -> str:
    """`text` without the secrets it may carry, and storable in PostgreSQL (no NUL, no lone
    surrogate). The patterns run only on text that has what each of them needs (a scheme's
    `://`, a parameter's `=`, or one of their words): most text has none, and every audit
    event scrubs a dozen strings."""
    if not text:
        return text
    if "=" in text or "://" in text or _TEXT_SECRET_WORDS.search(text):
        for pattern, replacement in _TEXT_SECRETS:
            text = pattern.sub(replacement, text)
    text = text.replace("\x00", "")
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _clean_key(name: str) -> str:
    """`scrub(name)`, remembered for a short key: keys repeat, and the common ones ("tokens",
    "token_count") carry a word that sends them through every pattern (4 µs each time). A long
    one is scrubbed each time, so the memory kept stays small."""
    return _scrubbed_key(name) if len(name) <= 128 else scrub(name)


@functools.lru_cache(maxsize=4096)
def _scrubbed_key(name: str) -> str:
    return scrub(name)


def redact(value: Any, *, key: bytes | None = None) -> Any:
    """A copy of JSON-like `value` with secret-named keys' values replaced, text scrubbed and
    personal data in it (in strings, and numbers that are cards or phone numbers) pseudonymised.

    A [name, value] pair (a header, a form field) whose name is a secret's counts as one.
    """
    key = hash_key() if key is None else key
    if isinstance(value, Mapping):
        return {
            _clean_key(str(name)): REDACTED if is_secret_key(str(name)) else redact(item, key=key)
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and is_secret_key(value[0]):
            return [scrub(value[0]), REDACTED]
        return [redact(item, key=key) for item in value]
    if isinstance(value, str):
        return pseudonymise(scrub(value), key=key)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        # A card number given as a JSON number; shorter numbers are counts and ids.
        text = pseudonymise(str(value), key=key)
        return value if text == str(value) else text
    return value


_ENCODER = DjangoJSONEncoder()


def as_json(value: Any) -> Any:
    """`json.loads(json.dumps(value, cls=DjangoJSONEncoder))`, without writing and reading the
    text: dates, decimals, UUIDs and lazy text become their text, tuples lists, number keys
    text, subclasses of str, int and float their plain values; what JSON cannot hold raises
    TypeError (a circular structure RecursionError). The walk costs a third of the round trip
    on an audit event's data."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # the text itself, as JSON writes a subclass's
    if isinstance(value, int):
        return int(int.__repr__(value))  # the number, as JSON writes an IntEnum's
    if isinstance(value, float):
        return float(float.__repr__(value))
    if isinstance(value, dict):
        return {_json_key(name): as_json(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return as_json(_ENCODER.default(value))


def _json_key(name: Any) -> str:
    """A dict's key as JSON writes it (it has only text keys)."""
    if isinstance(name, str):
        return str.__str__(name)
    if name is None or isinstance(name, bool | int | float):
        return json.dumps(name)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(name).__name__}")
