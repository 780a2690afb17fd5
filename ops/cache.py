"""Django's Redis cache with one client, and so one connection pool, per process.

Django keeps a cache backend per thread and per asyncio context (`caches` is an asgiref
`Local`), and under ASGI every request runs in a context of its own: each request built a new
`RedisCache`, whose client built a new connection pool, whose first command opened a new
connection to Redis (the API's throttle, the first thing to touch the cache, paid a connect and
a handshake on every call). redis-py's pools are thread-safe and reset themselves in a forked
child, so the backends of one process can share them (settings.CACHES makes the pool one that
waits for a free connection rather than failing when every connection is busy).

A fork while another thread holds the pool's lock (for a list operation) would leave the
child's pool locked: redis-py's reset takes that lock. Warden's processes fork before they use
the cache from other threads (Celery's prefork pool) or exec at once (the launcher).
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient

_clients: dict[tuple[str, ...], RedisCacheClient] = {}
_lock = threading.Lock()


class RedisCache(DjangoRedisCache):
    # Django's backend parses LOCATION and OPTIONS into these; django-stubs does not declare them.
    _servers: list[str]
    _options: dict[str, Any]

    @cached_property
    def _cache(self) -> RedisCacheClient:
        key = (*self._servers, repr(sorted(self._options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = RedisCacheClient(self._servers, **self._options)
        return client
