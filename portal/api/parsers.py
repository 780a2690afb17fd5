"""Request parsers."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's, with JSON nested too deeply for Python's decoder refused as malformed (DRF
    catches ValueError only, and RecursionError became a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None


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
