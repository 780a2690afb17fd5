"""The web process's cache (ops.cache): one Redis client per process, not one per request."""

import contextvars

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import caches
from django.test import AsyncClient

from integrations.tokens import token_create

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

    # The count's own connection is one; a background thread of an earlier test may add one.
    assert connections_received() - before <= 3


def test_backends_of_different_contexts_share_one_client():
    async def client_here():
        return caches.create_connection("default")._cache

    assert async_to_sync(client_here)() is async_to_sync(client_here)()
