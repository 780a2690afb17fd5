"""The web process's cache (ops.cache): one Redis client per process, not one per request."""

import contextvars
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import caches
from django.test import AsyncClient

from integrations.tokens import token_create
from ops.cache import RedisCache

pytestmark = pytest.mark.django_db


def connections_received() -> int:
    with redis.Redis.from_url(settings.REDIS_URL) as client:
        return int(client.info("stats")["total_connections_received"])


def test_api_requests_reuse_the_processs_redis_connections(people):
    # Each ASGI request runs in an asyncio context of its own (daphne's task for it), where
    # Django builds its cache backend anew: with Django's backend, every request opened a Redis
    # connection for the API's throttle. Each request here runs in a new, empty context too.
    _, secret = token_create(user=people.member, name="cache", scopes=["agents:run"], days=1)
    headers = {"Authorization": f"Bearer {secret}"}

    def get():
        request = async_to_sync(AsyncClient().get)
        response = contextvars.Context().run(request, "/api/v1/agents", headers=headers)
        assert response.status_code == 200, response.content

    get()  # the process's pool opens its connection
    before = connections_received()
    for _ in range(10):
        get()

    # The count's own connection is one; the margin is for a background thread of an earlier
    # test (Django's backend opened eleven here).
    assert connections_received() - before <= 3


def test_two_backends_of_one_process_share_one_client():
    assert caches.create_connection("default")._cache is caches.create_connection("default")._cache


def test_a_crowd_of_commands_waits_for_a_connection_instead_of_failing():
    # Every request's thread shares one pool now: a crowd of commands larger than the pool
    # waits for a free connection, where redis-py's default pool raised "Too many connections".
    options = {**settings.CACHES["default"]["OPTIONS"], "max_connections": 2}
    backend = RedisCache(settings.REDIS_URL, {"OPTIONS": options, "KEY_PREFIX": "crowd"})
    backend.set("key", "value")
    with redis.Redis.from_url(settings.REDIS_URL) as client:
        client.client_pause(300)  # every command waits 300 ms, holding its connection
        with ThreadPoolExecutor(8) as pool:
            values = list(pool.map(lambda _: backend.get("key"), range(8)))

    assert values == ["value"] * 8
