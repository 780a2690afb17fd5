"""ops.channel_layer on the embedded Redis: messages go through, and a receive ends when it is
cancelled, even when a cancellation is lost on the way (Python 3.11's `asyncio.wait_for`, which
redis-py sends every command through: CPython gh-86296)."""

import asyncio
import sys

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from ops.channel_layer import ChannelLayer, cancel_until_done


def run(scenario):
    return async_to_sync(scenario)()


async def wait_for_that_loses_its_cancellation() -> tuple[asyncio.Task, asyncio.Future]:
    """A task inside `asyncio.wait_for` whose awaited future completes in the same instant the
    task is cancelled, and which then goes on waiting, as channels_redis's read loop does."""
    loop = asyncio.get_running_loop()
    reply = loop.create_future()
    forever = loop.create_future()

    async def reader():
        await asyncio.wait_for(reply, timeout=30)
        await forever

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0)  # the task now waits inside wait_for
    reply.set_result(None)
    task.cancel()
    return task, forever


def test_the_configured_layer_is_the_cancellable_one():
    assert isinstance(get_channel_layer(), ChannelLayer)


def test_a_message_sent_to_a_channel_is_received():
    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello", "n": 1})
        return await asyncio.wait_for(layer.receive(channel), timeout=5)

    assert run(scenario) == {"type": "hello", "n": 1}


def test_a_receive_cancelled_while_it_reads_ends_and_the_next_one_gets_the_message():
    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.3)  # reading the channel (a blocking pop) by now
        waiting.cancel()
        await asyncio.wait([waiting], timeout=5)
        await layer.send(channel, {"type": "after"})
        return waiting.cancelled(), await asyncio.wait_for(layer.receive(channel), 5)

    cancelled, message = run(scenario)
    assert cancelled  # ended, and by its cancellation
    assert message == {"type": "after"}


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="gh-86296 is fixed in Python 3.12")
def test_this_python_loses_a_cancellation_that_coincides_with_wait_fors_result():
    """Why the layer exists: on this Python the task above is still running after cancel()."""

    async def scenario():
        task, forever = await wait_for_that_loses_its_cancellation()
        await asyncio.sleep(0.1)
        still_running = not task.done()
        forever.set_result(None)
        await task
        return still_running

    assert run(scenario) is True


def test_cancel_until_done_ends_a_task_that_lost_a_cancellation():
    async def scenario():
        task, _ = await wait_for_that_loses_its_cancellation()
        await asyncio.wait_for(cancel_until_done(task), timeout=5)
        return task.cancelled()

    assert run(scenario) is True


def test_a_caller_cancelled_again_meanwhile_still_waits_for_the_task_then_is_cancelled():
    async def scenario():
        task, _ = await wait_for_that_loses_its_cancellation()
        stopping = asyncio.ensure_future(cancel_until_done(task))
        await asyncio.sleep(0)
        stopping.cancel()  # the caller's own second cancellation
        await asyncio.wait([stopping], timeout=5)
        return task.cancelled(), stopping.cancelled()

    assert run(scenario) == (True, True)
