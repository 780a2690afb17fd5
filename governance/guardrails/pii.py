"""Personal data redaction before text leaves for a model route marked external.

Found: email addresses, phone numbers (international or North American forms, 7+ digits),
payment card numbers (13 to 19 digits that pass the Luhn check), IBANs (country code, length
and the mod-97 checksum) and US social security numbers (area, group and serial rules). Each
distinct value becomes a numbered placeholder, [EMAIL_1], [CARD_1]..., the same value the same
placeholder across all the messages of a call, so the model can still refer to it; `restore`
puts the values back into what the model returns (an answer, a tool call's arguments), so
redaction costs the user nothing but the model never sees the data.

Candidates that fail their checksum are left alone: an order number is not a card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
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
    if _IBAN_LENGTHS.get(code[:2]) != len(code):
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    return area not in {"000", "666"} and area[0] != "9" and group != "00" and serial != "0000"


def _card(match: re.Match) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return 13 <= len(digits) <= 19 and luhn(digits)


def _phone(match: re.Match) -> bool:
    text = match.group()
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:
        return False
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}", text):
        return False  # a date
    return text.startswith(("+", "(")) or bool(re.search(r"\d[ .-]\d", text))


# (kind, pattern, check) in the order they claim text: an IBAN's digits are not a phone.
_KINDS = [
    ("EMAIL", _EMAIL, lambda m: True),
    ("IBAN", _IBAN, lambda m: iban_valid(m.group())),
    ("CARD", _CARD, _card),
    ("SSN", _SSN, lambda m: ssn_valid(*m.groups())),
    ("PHONE", _PHONE, _phone),
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


def redact(text: str, redaction: Redaction | None = None) -> tuple[str, Redaction]:
    """`text` with each personal value replaced by its placeholder."""
    redaction = redaction if redaction is not None else Redaction()
    if not text:
        return text, redaction
    taken: list[tuple[int, int, str]] = []
    ruled_out: list[tuple[int, int]] = []  # shaped like an IBAN, card or SSN, failing its check
    for kind, pattern, check in _KINDS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(start < e and s < end for s, e in [*ruled_out, *[t[:2] for t in taken]]):
                continue
            if not check(match):
                if kind != "PHONE":
                    ruled_out.append((start, end))  # not a phone number either
                continue
            taken.append((start, end, redaction.placeholder(kind, match.group())))
    for start, end, placeholder in sorted(taken, reverse=True):
        text = text[:start] + placeholder + text[end:]
    return text, redaction


def redact_messages(messages: list[dict]) -> tuple[list[dict], Redaction]:
    """Chat messages with their text redacted, numbering placeholders across all of them."""
    redaction = Redaction()
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
                        "arguments": redact(call["function"].get("arguments") or "", redaction)[0],
                    },
                }
                for call in copy["tool_calls"]
            ]
        out.append(copy)
    return out, redaction


def restore(text: str, redaction: Redaction) -> str:
    """Put the values back for their placeholders (a JSON string's escapes are kept valid)."""
    if not text or not redaction.values:
        return text
    import json

    def value(match: re.Match) -> str:
        original = redaction.values.get(match.group())
        return match.group() if original is None else json.dumps(original)[1:-1]

    return re.sub(r"\[[A-Z]+_\d+\]", value, text)
