"""The one rate-limit primitive (governance.ratelimits) against the session's real Redis: a
limit is enforced per key, counted where every process sees it, and says when it resets."""

import time
import uuid

import redis
from django.conf import settings
from limits import RateLimitItemPerSecond

from governance import ratelimits


def fresh() -> str:
    return uuid.uuid4().hex  # counters outlive a test: each test counts under its own key


def test_a_fixed_window_refuses_past_the_limit_per_key():
    key, other = fresh(), fresh()

    hits = [ratelimits.hit("3/minute", "test", key) for _ in range(5)]

    assert hits == [True, True, True, False, False]
    assert ratelimits.hit("3/minute", "test", other)
    assert ratelimits.remaining("3/minute", "test", key) == 0
    assert 1 <= ratelimits.reset_in("3/minute", "test", key) <= 60


def test_the_count_is_in_redis_not_in_the_process():
    key = fresh()
    assert ratelimits.hit("1/minute", "test", key)
    ratelimits._storage.cache_clear()  # as another process would: a client of its own
    ratelimits._limiter.cache_clear()

    assert not ratelimits.hit("1/minute", "test", key)
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert any(key in name.decode() for name in client.keys("warden:limits:*"))


def test_a_moving_window_does_not_count_refused_hits_and_frees_up_as_it_moves():
    key, limit = fresh(), RateLimitItemPerSecond(2, 1)

    hits = [ratelimits.hit(limit, key, window="moving") for _ in range(4)]
    time.sleep(1.1)

    assert hits == [True, True, False, False]
    assert ratelimits.remaining(limit, key, window="moving") == 2
    assert ratelimits.hit(limit, key, window="moving")


def test_slots_are_given_back_and_never_overtaken():
    key = f"test-slots:{fresh()}"

    taken = [ratelimits.slot_take(key, most=2, ttl=60) for _ in range(3)]
    ratelimits.slot_give(key)

    assert taken == [True, True, False]
    assert ratelimits.slot_take(key, most=2, ttl=60)
    assert not ratelimits.slot_take(key, most=2, ttl=60)
