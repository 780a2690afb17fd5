"""Streaming an export to an HTTP client."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Generator

from asgiref.sync import sync_to_async


async def stream_lines(lines: Generator[str, None, None], size: int = 500) -> AsyncIterator[str]:
    """Stream a sync generator under ASGI without buffering it whole.

    Each chunk is produced in the request's one thread-sensitive thread, so the generator's
    transaction (one snapshot for the whole export) stays on one database connection.
    """
    take = sync_to_async(lambda: "".join(itertools.islice(lines, size)), thread_sensitive=True)
    try:
        while chunk := await take():
            yield chunk
    finally:
        await sync_to_async(lines.close, thread_sensitive=True)()
