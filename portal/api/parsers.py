"""Request parsers."""

from __future__ import annotations

import json

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's, with JSON nested too deeply for Python's decoder refused as malformed (DRF
    catches ValueError only, and RecursionError became a 500). (A body over
    DATA_UPLOAD_MAX_MEMORY_SIZE never gets here: Django refuses to read it, see problems.py.)"""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None


def unstorable(value) -> str | None:
    """Why PostgreSQL could not keep `value` (text, or JSON for a jsonb column), or None: a NUL
    character, or an unpaired surrogate (valid JSON, not valid UTF-8)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return "it is not JSON that can be stored"
    if "\x00" in text or "\\u0000" in text:
        return "it contains a NUL character, which cannot be kept"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "it contains an unpaired surrogate, which is not text"
    return None


MAX_DEPTH = 32


def too_deep(value, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON `value` nests objects or arrays more than `limit` deep. The schema
    validators recurse per level (jsonschema in Python): deeper input would exhaust the stack."""
    level = [value]
    for _ in range(limit + 1):
        level = [child for item in level for child in _children(item)]
        if not level:
            return False
    return True


def _children(value) -> list:
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list):
        return []
    return [child for child in value if isinstance(child, dict | list)]
