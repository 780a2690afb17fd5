"""One way to a raw psycopg cursor on Django's connection, for the statements of the hot path
(the ledger's, the checkpoint's, retrieval's): its statements are prepared after a few
executions (DATABASE_PREPARED_STATEMENTS), which Django's own cursors never are, and it runs
inside whatever transaction Django's connection is in. Django has no public way to this:
`connection.connection` is the documented underlying DB-API connection."""

from __future__ import annotations

import psycopg
from django.db import connection


def raw_cursor() -> psycopg.Cursor:
    """A server-side-binding cursor on Django's (default) connection, opened if need be."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)
