from rest_framework.pagination import CursorPagination


class Cursor(CursorPagination):
    """Opaque cursors over a stable order (newest first unless a view says otherwise)."""

    page_size = 50
    max_page_size = 200
    page_size_query_param = "limit"
    ordering = "-pk"
