"""Private files under var/: written whole (never half), readable only by their owner.

Standard library only: settings use it before Django is configured.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private(path: Path, text: str, *, keep_existing: bool = False) -> str:
    """Write `text` to `path` with mode 0600, atomically; return what the file then holds.

    With `keep_existing`, a file that already exists (another process was first) wins and is
    returned unchanged.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    try:
        if keep_existing:
            with contextlib.suppress(FileExistsError):  # the first writer wins
                os.link(draft, path)
        else:
            draft.replace(path)
    finally:
        draft.unlink(missing_ok=True)
    return path.read_text(encoding="utf-8")
