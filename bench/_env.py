"""What a benchmark does before anything of Warden's loads, and the servers it runs on.

Imported first by each benchmark (run as `bench/<name>.py`, so this folder is on the path):
Warden's code importable, Django's settings named, and the embedded servers' data in a
throwaway directory, never the developer's (DATABASE_URL and REDIS_URL are dropped).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VAR = tempfile.mkdtemp(prefix="warden-bench-")
os.environ.update(WARDEN_VAR_DIR=VAR, DJANGO_SETTINGS_MODULE="config.settings", LOG_LEVEL="WARNING")
for name in ("DATABASE_URL", "REDIS_URL"):
    os.environ.pop(name, None)


@contextmanager
def embedded(*, redis: bool = False) -> Iterator[list]:
    """The embedded PostgreSQL (and Redis if asked), started for the benchmark's body (Django
    set up first); afterwards Django's connection closed, the servers stopped and the
    throwaway directory removed."""
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from ops.embedded import EmbeddedPostgres, EmbeddedRedis

    servers = [EmbeddedPostgres(settings.EMBEDDED)]
    if redis:
        servers.append(EmbeddedRedis(settings.EMBEDDED))
    for server in servers:
        server.start()
    try:
        yield servers
    finally:
        connection.close()
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(VAR, ignore_errors=True)
