"""The one pagination every list of the API uses."""

from __future__ import annotations

import binascii
from base64 import b64decode
from urllib.parse import parse_qsl

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connection
from rest_framework.pagination import Cursor as Position
from rest_framework.pagination import CursorPagination

from integrations.api.problems import InvalidCursor
from integrations.inputs import unstorable


class Cursor(CursorPagination):
    """Opaque cursors over a stable order (newest first unless a view says otherwise).

    A cursor is base64 of `o=<offset>&r=1&p=<position>`, and a client can write any: DRF
    decodes it leniently and filters on the position as it stands, so a position the ordering
    field cannot hold ("abc" for an id, a NUL, an integer past bigint) reached the database and
    answered 500. Here a cursor is decoded strictly and its position checked against the
    ordering field; anything else is a 400 problem document (`invalid-cursor`)."""

    page_size = 50
    max_page_size = 200
    page_size_query_param = "limit"
    ordering = "-pk"

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model  # decode_cursor checks the position against its field
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            text = b64decode(encoded.encode("ascii"), validate=True).decode("ascii")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
        except (ValueError, binascii.Error):  # UnicodeError is a ValueError
            raise InvalidCursor() from None
        tokens = dict(pairs)
        if len(tokens) != len(pairs) or not set(tokens) <= {"o", "r", "p"}:
            raise InvalidCursor()
        offset, reverse = tokens.get("o", "0"), tokens.get("r", "0")
        if not _digits(offset) or reverse not in ("0", "1"):
            raise InvalidCursor()
        position = tokens.get("p")
        if position is not None:
            self._check_position(position)
        return Position(
            offset=min(int(offset), self.offset_cutoff), reverse=reverse == "1", position=position
        )

    def _check_position(self, position: str) -> None:
        """Refuse a position the ordering field could not be compared with in SQL."""
        name = self.ordering[0].lstrip("-")
        meta = self._model._meta
        try:
            field = meta.pk if name == "pk" else meta.get_field(name)
        except FieldDoesNotExist:
            field = None
        if unstorable(position) or len(position) > 100:
            raise InvalidCursor()
        if field is None:
            return
        try:
            value = field.to_python(position)
        except (ValidationError, ValueError, TypeError, OverflowError):
            raise InvalidCursor() from None
        if value is None:  # "" is None to most fields: no position at all
            raise InvalidCursor()
        limits = connection.ops.integer_field_ranges.get(field.get_internal_type())
        if limits and not limits[0] <= value <= limits[1]:
            raise InvalidCursor()


def _digits(text: str) -> bool:
    # ASCII only: int() also takes other scripts' digits, and "+1" or " 1".
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()
