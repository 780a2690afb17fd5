"""Where Warden keeps its files: the var directory, and under it the embedded servers' data,
Unix sockets and logs; the embedded database's name and user.

Standard library only: settings read these before Django is configured, and the launcher
(ops.embedded) and the test harness use them to start the servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATABASE_NAME = "warden"
POSTGRES_USER = "postgres"
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class EmbeddedError(Exception):
    """A server could not start; the message is one line saying what is wrong and what to do."""


@dataclass(frozen=True)
class EmbeddedPaths:
    """Where the embedded servers keep their data, sockets and logs under one var directory."""

    var_dir: Path

    @property
    def pg_data(self) -> Path:
        return self.var_dir / "pg"

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_data

    @property
    def redis_dir(self) -> Path:
        return self.var_dir / "redis"

    @property
    def redis_socket(self) -> Path:
        return self.redis_dir / "redis.sock"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def redis_url(self) -> str:
        return f"unix://{self.redis_socket}"

    def check_socket_length(self) -> None:
        """Unix socket paths are short (107 bytes): refuse a var/ too deep for them."""
        for sock in (self.pg_socket_dir / ".s.PGSQL.5432", self.redis_socket):
            length = len(os.fsencode(sock))
            if length > _MAX_SOCKET_PATH:
                raise EmbeddedError(
                    f"the data directory {self.var_dir} is too deep for a Unix socket ({length} "
                    f"bytes, at most {_MAX_SOCKET_PATH}): set WARDEN_VAR_DIR to a shorter path, "
                    "such as ~/warden-var"
                )
