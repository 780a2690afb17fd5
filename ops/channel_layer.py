"""The channel layer (channels_redis), with a receive that always ends when it is cancelled.

On Python 3.11, `asyncio.wait_for` drops a cancellation that arrives in the instant its awaited
operation completes (CPython gh-86296, fixed in 3.12 by rebuilding `wait_for` on
`asyncio.timeout`), and redis-py sends every command on a connection with a socket timeout
through it. A consumer's channel receive cancelled in that instant (the client left while the
connection was being made, typically) read its channel on, for ever, and the consumer, which
awaits its cancelled receive before it ends, never ended: a leaked task and connection per
unlucky disconnect under load, and a test that hung for ten minutes.
"""

from __future__ import annotations

import asyncio

from channels_redis.core import RedisChannelLayer

# How long a receive is given to end after each cancellation: one lost cancellation costs a
# retry; the next one lands in the channel read, which ends.
RECANCEL_SECONDS = 0.05


class ChannelLayer(RedisChannelLayer):
    def create_pool(self, index):
        """channels_redis's pool, but one that makes a command wait for a free connection
        instead of failing with "Too many connections" (redis-py's pools hold 100 by default):
        a thousand websockets joining their groups at once (bench/websocket_sessions.py) lost the
        channel layer."""
        from django.conf import settings
        from redis.asyncio import BlockingConnectionPool

        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        return BlockingConnectionPool.from_url(
            host.pop("address"),
            max_connections=settings.WARDEN_LIVE_REDIS_CONNECTIONS,
            timeout=settings.REDIS_BLOCKING_OPTIONS["socket_timeout"],
            **host,
        )

    async def receive(self, channel):
        receiving = asyncio.ensure_future(super().receive(channel))
        try:
            return await asyncio.shield(receiving)
        except asyncio.CancelledError:
            await cancel_until_done(receiving)
            raise


async def cancel_until_done(task: asyncio.Future) -> None:
    """Cancel `task` again and again until it has ended (each cancellation it loses is sent
    again), and only then return: the caller's own cancellation waits for it, once more if it
    comes meanwhile."""
    cancelled_again = False
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait([task], timeout=RECANCEL_SECONDS)
        except asyncio.CancelledError:
            cancelled_again = True
    if not task.cancelled():
        task.exception()  # read, so that asyncio does not log it as never retrieved
    if cancelled_again:
        raise asyncio.CancelledError
