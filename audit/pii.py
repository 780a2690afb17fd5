"""Personal data: found in text, redacted before it leaves for a model route marked external,
and kept only as keyed hashes where it is stored. It lives in audit, the bottom layer, since
the audit trail pseudonymises with it; governance's guardrails and the apps above use it from
here.

Found: email addresses, also written out to dodge filters ("jane [at] example [dot] com",
"jane(at)example.com"); phone numbers (international or North American forms with separators,
and any number the `phonenumbers` library finds valid in one of WARDEN_PII_PHONE_REGIONS, such
as the German "0151 23456789"); payment card numbers (13 to 19 digits, spaces, dashes or dots
between groups, that pass the Luhn check); IBANs in either case (country code, length and the
mod-97 checksum) and US social security numbers (area, group and serial rules). Each
distinct value becomes a numbered placeholder, [EMAIL_1], [CARD_1]..., the same value the same
placeholder across all the messages of a call, so the model can still refer to it; `restore`
puts the values back into what the model returns (an answer, a tool call's arguments), so
redaction costs the user nothing but the model never sees the data.

Candidates that fail their checksum are left alone: an order number is not a card.

`pseudonymise` is the other use: for what is kept (the audit trail, the tool ledger), each value
becomes a keyed hash, [EMAIL:3f9a...], the same for the same value however it was written, so a
record can still be matched to a person who asks (hash their value with the key) but the value
itself is never stored. `as_seen_by` shows a run's data that way to anyone but the run's owner
(reviewers, auditors, the admin), and `unpseudonymise` puts the values back into a reviewer's
edit that kept the hashes where the values were.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# "at" and "dot" in brackets of any kind ("[at]", "(at)", "{dot}", "<at>"), or as bare words;
# a bare " at " only counts with a written-out dot after it ("jane at example dot com"): "look
# at example.com" is not an address.
_AT = r"\s*[\[({<]\s*at\s*[\])}>]\s*"
_DOT = r"(?:\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_WRITTEN = re.compile(
    rf"(?i)(?<![\w.%+-])[A-Za-z0-9._%+-]+"
    rf"(?:{_AT}{_LABEL}(?:(?:{_DOT}|\.){_LABEL})*(?:{_DOT}|\.)[A-Za-z]{{2,}}"
    rf"|\s+at\s+{_LABEL}(?:(?:{_DOT}|\.){_LABEL})*{_DOT}[A-Za-z]{{2,}})\b"
)
# Not inside a longer word: a hex digest or a UUID has digit runs too.
_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
# Dots between groups only in the printed layout (4-4-4-4, 4-4-4-4-3): a decimal is not a card.
_CARD_DOTTED = re.compile(r"(?<![\w.])\d{4}(?:\.\d{4}){3}(?:\.\d{3})?(?!\w|\.\d)")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w-])"
    r"|(?<![\w+-])\+\d{8,15}(?![\w-])"
)
_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
}  # fmt: skip


def luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    code = text.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(code[:2]) != len(code) or not code.isascii() or not code.isalnum():
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    return area not in {"000", "666"} and area[0] != "9" and group != "00" and serial != "0000"


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:
        return False
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}", text):
        return False  # a date
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", text):
        return False  # an IPv4 address
    return text.startswith(("+", "(")) or bool(re.search(r"\d[ .-]\d", text))


def _iban_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    """From each country code and check digits, exactly that country's length of characters
    (single spaces between groups allowed): an IBAN followed by "EUR 500" is still found."""
    for match in re.finditer(r"\b([A-Za-z]{2})\d{2}", text):
        length = _IBAN_LENGTHS.get(match.group(1).upper())
        if length is None:
            continue
        end, count = match.start(), 0
        while end < len(text) and count < length:
            char = text[end]
            if char.isascii() and char.isalnum():
                count, end = count + 1, end + 1
            elif char == " " and end + 1 < len(text) and text[end + 1].isalnum():
                end += 1
            else:
                break
        if count == length and (end == len(text) or not text[end].isalnum()):
            yield match.start(), end, iban_valid(text[match.start() : end])


def _card_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    """Digit runs of card length, shortened group by group from the end until the Luhn check
    passes: "4111 1111 1111 1111 123" is a card and a CVC."""
    for match in _CARD.finditer(text):
        start, found = match.start(), match.group()
        ends = [len(found)] + [i for i in range(len(found) - 1, 0, -1) if found[i] in " -"]
        for end in ends:
            if _card_digits(found[:end]):
                yield start, start + end, True
                break
        else:
            yield start, match.end(), False


def _dotted_card_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    for match in _CARD_DOTTED.finditer(text):
        yield match.start(), match.end(), _card_digits(match.group())


def _card_digits(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and luhn(digits)


def _regex_spans(
    pattern: re.Pattern[str], check: Callable[[re.Match[str]], bool]
) -> Callable[[str], Iterator[tuple[int, int, bool]]]:
    def spans(text: str) -> Iterator[tuple[int, int, bool]]:
        for match in pattern.finditer(text):
            yield match.start(), match.end(), check(match)

    return spans


# A bracketed "at" or the word "dot": `_AT` without the spaces around it, which a search would
# try from every space of a long run of them (quadratic: 40,000 spaces took 7.6 s).
_WRITTEN_HINT = re.compile(r"(?i)[\[({<]\s*at\s*[\])}>]|\bdot\b")


def _written_email_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    """Written-out addresses; the full pattern only runs on text with a bracketed "at" or the
    word "dot" in it (it tries every word as a local part: most of redaction's time)."""
    if _WRITTEN_HINT.search(text):
        for match in _EMAIL_WRITTEN.finditer(text):
            yield match.start(), match.end(), True


# Countries whose national formats (no +, a trunk 0) are recognised; a number written with its
# country code is recognised from anywhere. Each region costs a pass over text with digits in it.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "IE")
# Where a phone number could be: 7+ digits with the separators numbers are written with. Only
# these stretches go to `phonenumbers` (scanning all the text once per region took ~100 ms per
# 4 KB; this takes a few ms).
_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+.-])(?:\+|00|\()?\d(?:[ ().\-/]{0,3}\d){6,16}(?![\w-]|\.\d)"
)


def _phone_regions() -> tuple[str, ...]:
    from django.conf import settings

    if settings.configured:
        return tuple(getattr(settings, "WARDEN_PII_PHONE_REGIONS", PHONE_REGIONS))
    return PHONE_REGIONS


def _phonenumber_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    """Numbers `phonenumbers` finds valid (its VALID leniency: a real numbering plan's length
    and prefix), in any of the configured regions."""
    regions = _phone_regions()
    for candidate in _PHONE_CANDIDATE.finditer(text):
        for start, end in _valid_numbers(candidate.group(), regions):
            yield candidate.start() + start, candidate.start() + end, True


@functools.lru_cache(maxsize=4096)
def _valid_numbers(candidate: str, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", candidate):
        return ()  # an IPv4 address
    found: set[tuple[int, int]] = set()
    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(
            candidate, region, leniency=phonenumbers.Leniency.VALID
        ):
            # Bare digits are an id or an order number more often than a phone number, unless
            # they start with a trunk or international prefix ("015123456789").
            if match.raw_string.isdigit() and not match.raw_string.startswith("0"):
                continue
            found.add((match.start, match.end))
    return tuple(sorted(found))


# (kind, finder) in the order they claim text: an IBAN's digits are not a phone number.
_KINDS = [
    ("EMAIL", _regex_spans(_EMAIL, lambda m: True)),
    ("EMAIL", _written_email_spans),
    ("IBAN", _iban_spans),
    ("CARD", _card_spans),
    ("CARD", _dotted_card_spans),
    ("SSN", _regex_spans(_SSN, lambda m: ssn_valid(*m.groups()))),
    ("PHONE", _phonenumber_spans),  # first: it knows where a number starts ("+33 1 42...")
    ("PHONE", _regex_spans(_PHONE, _phone)),
]


@dataclass
class Redaction:
    """Placeholders to values, kept by the caller to restore what the model returns."""

    values: dict[str, str] = field(default_factory=dict)
    _by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._by_value:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            name = f"[{kind}_{self._counts[kind]}]"
            self._by_value[key], self.values[name] = name, value
        return self._by_value[key]

    def kinds(self) -> dict[str, int]:
        return dict(self._counts)

    def copy(self) -> Redaction:
        return Redaction(dict(self.values), dict(self._by_value), dict(self._counts))


# Every kind has a digit in it, or an @ or a written-out "at"/"dot" (an e-mail address): text
# with none of these (a name, a status, most of an audit event's data) holds no value to find.
_MAY_HOLD = re.compile(r"[\d@]")


def find(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each personal value in `text`, in order."""
    if not _MAY_HOLD.search(text) and not _WRITTEN_HINT.search(text):
        return []
    taken: list[tuple[int, int, str]] = []
    # Claimed by a value, or shaped like an IBAN or SSN and failing its check (then not a phone
    # number either).
    claimed: list[tuple[int, int]] = []
    for kind, spans in _KINDS:
        for start, end, valid in spans(text):
            if any(start < e and s < end for s, e in claimed):
                continue
            if valid:
                taken.append((start, end, kind))
                claimed.append((start, end))
            elif kind in ("IBAN", "SSN"):
                claimed.append((start, end))
    return sorted(taken)


def _replace(text: str, name: Callable[[str, str], str]) -> str:
    named = [(start, end, name(kind, text[start:end])) for start, end, kind in find(text)]
    for start, end, replacement in reversed(named):  # numbered in reading order
        text = text[:start] + replacement + text[end:]
    return text


def redact(text: str, redaction: Redaction | None = None) -> tuple[str, Redaction]:
    """`text` with each personal value replaced by its placeholder."""
    redaction = redaction if redaction is not None else Redaction()
    if not text:
        return text, redaction
    return _replace(text, redaction.placeholder), redaction


def normalised(kind: str, value: str) -> str:
    """One spelling per value: "Jane(at)Example.com" is jane@example.com, a card or an IBAN its
    characters without separators, a phone number its E.164 form where it parses."""
    if kind == "EMAIL":
        value = re.sub(rf"(?i){_AT}|\s+at\s+", "@", value, count=1)
        return re.sub(rf"(?i){_DOT}", ".", value).lower()
    if kind == "PHONE":
        for region in (None, *_phone_regions()):
            try:
                number = phonenumbers.parse(value, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_possible_number(number):
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return re.sub(r"[^0-9A-Za-z]", "", value).upper()


def hash_key() -> bytes:
    """The key of the pseudonyms Warden stores: WARDEN_PII_HASH_KEY, or one derived from
    SECRET_KEY (never SECRET_KEY itself)."""
    from django.conf import settings

    if settings.WARDEN_PII_HASH_KEY:
        return settings.WARDEN_PII_HASH_KEY.encode()
    return _derived_key(settings.SECRET_KEY)


@functools.lru_cache(maxsize=4)
def _derived_key(secret: str) -> bytes:
    """Derived once per secret: every audit event asks for the key."""
    return hmac.new(secret.encode(), b"warden.pii.hash", hashlib.sha256).digest()


# What `pseudonym` writes: a value's kind and the start of its keyed hash.
PSEUDONYM = re.compile(r"\[[A-Z]+:[0-9a-f]{16}\]")


def pseudonym(kind: str, value: str, *, key: bytes) -> str:
    digest = hmac.new(key, f"{kind}:{normalised(kind, value)}".encode(), hashlib.sha256)
    return f"[{kind}:{digest.hexdigest()[:16]}]"


def pseudonymise(text: str, *, key: bytes) -> str:
    """`text` with each personal value replaced by its keyed hash (see `pseudonym`)."""
    if not text:
        return text
    return _replace(text, lambda kind, value: pseudonym(kind, value, key=key))


def pseudonymise_value(value: Any, *, key: bytes) -> Any:
    """JSON-like `value` with the strings in it (not the keys) pseudonymised; a number that is
    a card number becomes its pseudonym's string."""
    if isinstance(value, str):
        return pseudonymise(value, key=key)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and abs(value) >= 10**12:  # a card number; shorter ones are ids
        text = pseudonymise(str(value), key=key)
        return value if text == str(value) else text
    if isinstance(value, list | tuple):
        return [pseudonymise_value(item, key=key) for item in value]
    if isinstance(value, dict):
        return {k: pseudonymise_value(item, key=key) for k, item in value.items()}
    return value


def sees_values(*, viewer_id: int | None, owner_id: int | None) -> bool:
    """Whether the user `viewer_id` sees the personal values in a run of `owner_id`'s: only
    the run's owner does, it is their conversation; anyone else (reviewers, auditors, the
    admin console, which passes no viewer) sees them as the audit trail keeps them, hashed."""
    return viewer_id is not None and viewer_id == owner_id


def as_seen_by(value: Any, *, viewer_id: int | None, owner_id: int | None) -> Any:
    """JSON-like `value` from a run (its text, a tool call's arguments, a held answer) as the
    user `viewer_id` may see it (`sees_values`): as it is, or each personal value a keyed
    hash. The one function every page and API that shows a run's data goes through."""
    if sees_values(viewer_id=viewer_id, owner_id=owner_id):
        return value
    return pseudonymise_value(value, key=hash_key())


def pseudonymise_parts(parts: list[tuple[str, bool]], *, key: bytes) -> list[tuple[str, bool]]:
    """A text cut into (part, marked) pieces, pseudonymised as one text: a value across a
    cut is still found, and its hash is marked if any of it was."""
    text = "".join(part for part, _ in parts)
    marked = [flag for part, flag in parts for _ in part]
    out: list[tuple[str, bool]] = []
    at = 0
    for start, end, kind in [*find(text), (len(text), len(text), "")]:
        out += [(text[i], marked[i]) for i in range(at, start)]
        if kind:
            out.append((pseudonym(kind, text[start:end], key=key), any(marked[start:end])))
        at = end
    merged: list[tuple[str, bool]] = []
    for piece, flag in out:
        if merged and merged[-1][1] == flag:
            merged[-1] = (merged[-1][0] + piece, flag)
        else:
            merged.append((piece, flag))
    return merged


_PSEUDONYM = re.compile(r"\[(?:EMAIL|PHONE|CARD|IBAN|SSN):[0-9a-f]{16}\]")


class UnknownPseudonym(ValueError):
    """An edit carries a keyed hash that stands for no value at that place of the original."""

    def __init__(self, pseudonym: str, where: str):
        super().__init__(f"{pseudonym} at {where or '/'}")
        self.pseudonym, self.where = pseudonym, where


def unpseudonymise(edited: Any, *, original: Any) -> Any:
    """A reviewer's edit of `original` (which they were shown pseudonymised) with each keyed
    hash put back to the value it stands for, where the same place of `original` (the same
    object keys; a list's items are one place) held that value: an edit that kept a hashed
    e-mail sends the real one, never the hash. A hash found anywhere else raises
    UnknownPseudonym: a value is not moved to where it was not (into another field of a tool
    call, say), and a hash is never sent as if it were the value."""
    values: dict[tuple[str, ...], dict[str, Any]] = {}
    _values_at(original, (), values, hash_key())
    return _put_back(edited, (), values)


def _values_at(
    value: Any, at: tuple[str, ...], found: dict[tuple[str, ...], dict[str, Any]], key: bytes
) -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            _values_at(item, (*at, str(name)), found, key)
    elif isinstance(value, list | tuple):
        for item in value:
            _values_at(item, at, found, key)
    elif isinstance(value, str):
        for start, end, kind in find(value):
            found.setdefault(at, {})[pseudonym(kind, value[start:end], key=key)] = value[start:end]
    elif isinstance(value, int) and (shown := pseudonymise_value(value, key=key)) != value:
        found.setdefault(at, {})[shown] = value  # a card given as a JSON number


def _put_back(
    value: Any, at: tuple[str, ...], values: dict[tuple[str, ...], dict[str, Any]]
) -> Any:
    if isinstance(value, dict):
        return {name: _put_back(item, (*at, str(name)), values) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_put_back(item, at, values) for item in value]
    if not isinstance(value, str) or not _PSEUDONYM.search(value):
        return value
    here = values.get(at, {})
    if _PSEUDONYM.fullmatch(value) and value in here:
        return here[value]  # as it was: a card given as a number stays a number

    def back(match: re.Match[str]) -> str:
        if match.group() not in here:
            raise UnknownPseudonym(match.group(), "".join(f"/{name}" for name in at))
        return str(here[match.group()])

    return _PSEUDONYM.sub(back, value)


def redact_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Redaction]:
    """Chat messages with their text redacted, numbering placeholders across all of them."""
    redaction = Redaction()
    return _redacted(messages, redaction), redaction


class GrowingRedaction:
    """redact_messages for a conversation that grows at its end between calls (a run's prompt,
    step after step): each message is redacted once, with the placeholders it would get from
    redacting the whole list again. A list whose earlier messages are not the very objects
    seen before is redacted afresh."""

    def __init__(self) -> None:
        self._seen: list[dict[str, Any]] = []
        self._out: list[dict[str, Any]] = []
        self._redaction = Redaction()

    def __call__(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Redaction]:
        known = len(self._seen)
        grown = len(messages) >= known and all(map(operator.is_, messages, self._seen))
        if not grown:
            self._out, self._redaction, known = [], Redaction(), 0
        self._out += _redacted(messages[known:], self._redaction)
        self._seen = list(messages)
        # A copy: the caller keeps it while later calls add to ours.
        return list(self._out), self._redaction.copy()


def _redacted(messages: list[dict[str, Any]], redaction: Redaction) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        copy = dict(message)
        if isinstance(copy.get("content"), str):
            copy["content"], _ = redact(copy["content"], redaction)
        if copy.get("tool_calls"):
            copy["tool_calls"] = [
                {
                    **call,
                    "function": {
                        **call["function"],
                        "arguments": _redact_arguments(
                            call["function"].get("arguments") or "", redaction
                        ),
                    },
                }
                for call in copy["tool_calls"]
            ]
        out.append(copy)
    return out


def _redact_arguments(arguments: str, redaction: Redaction) -> str:
    """A tool call's JSON arguments redacted value by value, so they stay JSON (a card number
    given as a JSON number becomes its placeholder string)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return redact(arguments, redaction)[0]
    return json.dumps(_redact_value(value, redaction))


def _redact_value(value: Any, redaction: Redaction) -> Any:
    if isinstance(value, str):
        return redact(value, redaction)[0]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        text = redact(str(value), redaction)[0]
        return value if text == str(value) else text
    if isinstance(value, list):
        return [_redact_value(item, redaction) for item in value]
    if isinstance(value, dict):
        return {key: _redact_value(item, redaction) for key, item in value.items()}
    return value


def restore(text: str, redaction: Redaction) -> str:
    """Put the values back for their placeholders (a JSON string's escapes are kept valid)."""
    if not text or not redaction.values:
        return text

    def value(match: re.Match[str]) -> str:
        original = redaction.values.get(match.group())
        return match.group() if original is None else json.dumps(original)[1:-1]

    return re.sub(r"\[[A-Z]+_\d+\]", value, text)
