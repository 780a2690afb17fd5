"""Request parsers."""

from __future__ import annotations

import re

from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError

from integrations.inputs import unstorable, unstorable_at

__all__ = ["JSONParser", "Unstorable", "too_deep", "unstorable"]


class Unstorable(ValidationError):
    """A JSON body holding text no database keeps. The error is filed under the body's
    top-level field, as a serializer files its own (`param` for the OpenAI endpoint), and its
    message names the exact place (`arguments.title contains ...`)."""

    openai = ("invalid_request_error", "invalid_request")

    def __init__(self, path: str, problem: str):
        field = re.split(r"[.\[]", path, maxsplit=1)[0] or "body"
        self.param, self.message = field, f"{path} {problem}"
        super().__init__({field: [self.message]})


class JSONParser(parsers.JSONParser):
    """DRF's, with JSON nested too deeply for Python's decoder refused as malformed (DRF
    catches ValueError only, and RecursionError became a 500), and JSON holding a NUL or an
    unpaired surrogate anywhere (both valid JSON escapes, neither storable text) refused as
    invalid, naming the field, before any view sees it. (A body over
    DATA_UPLOAD_MAX_MEMORY_SIZE never gets here: Django refuses to read it, see problems.py.)"""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
        if found := unstorable_at(data):
            raise Unstorable(*found)
        return data


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
