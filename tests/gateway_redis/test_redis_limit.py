"""RedisRateLimiter: exact limits across concurrent clients, Redis' clock, tokens buckets."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dskit.gateway._settings import RateLimit
from dskit.gateway.backends._limits import RateLimiter
from dskit.gateway.backends._redis_limit import CostTooHighError, RedisRateLimiter
from dskit.gateway.backends._redis_log import connect

pytestmark = pytest.mark.redis


def run_client(url: str, ns: str, limit: RateLimit, calls: int, start: threading.Barrier,
               accepted: list[int], waits: list[float]) -> None:  # fmt: skip
    """One gateway instance: its own thread, event loop and Redis connection."""

    async def main() -> None:
        limiter = RedisRateLimiter(connect(url), limit, namespace=ns)
        start.wait()
        results = await asyncio.gather(*(limiter.acquire("alice") for _ in range(calls)))
        accepted.append(sum(1 for wait in results if wait == 0.0))
        waits.extend(wait for wait in results if wait > 0)
        await limiter.redis.aclose()

    asyncio.run(main())


def test_limit_is_exact_across_three_instances(redis_url: str, redis_prefix: str) -> None:
    limit = RateLimit(rate=0.01, burst=25)  # refills one request per 100 s: none in the test
    start, accepted, waits = threading.Barrier(3), [], []
    threads = [
        threading.Thread(
            target=run_client, args=(redis_url, redis_prefix, limit, 30, start, accepted, waits)
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(accepted) == 3
    assert sum(accepted) == 25
    assert len(waits) == 65
    assert all(0 < wait <= 100.0 + 1e-6 for wait in waits)


async def test_wait_tells_when_a_request_fits_again(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(
        connect(redis_url), RateLimit(rate=20, burst=2), namespace=redis_prefix
    )
    try:
        assert isinstance(limiter, RateLimiter)
        assert await limiter.acquire("bob") == 0.0
        assert await limiter.acquire("bob") == 0.0
        wait = await limiter.acquire("bob")
        assert 0.0 < wait <= 0.05 + 1e-6
        await asyncio.sleep(wait + 0.02)  # the wait the limiter itself told us
        assert await limiter.acquire("bob") == 0.0
        assert await limiter.acquire("carol") == 0.0, "principals have their own buckets"
    finally:
        await limiter.redis.aclose()


async def test_tokens_bucket_all_or_nothing(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(
        connect(redis_url), RateLimit(rate=0.01, burst=5), tokens=RateLimit(rate=1, burst=100),
        namespace=redis_prefix,
    )  # fmt: skip
    try:
        assert await limiter.take("dan", tokens=80) == 0.0
        wait = await limiter.take("dan", tokens=50)
        assert 25 <= wait <= 31, "about 30 tokens short at 1 token/s"
        for _ in range(4):  # the refused request did not use up a request
            assert await limiter.take("dan", tokens=1) == 0.0
        assert await limiter.take("dan", tokens=1) > 90, "now the requests bucket is empty"
        with pytest.raises(CostTooHighError, match="101 tokens"):
            await limiter.take("dan", tokens=101)
        with pytest.raises(ValueError, match="negative"):
            await limiter.acquire("dan", -1)
    finally:
        await limiter.redis.aclose()


async def test_odd_principal_names_are_safe(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(
        connect(redis_url), RateLimit(rate=0.01, burst=1), namespace=redis_prefix
    )
    try:
        for name in ("", "a{b}", "x" * 500, "sp ace"):
            assert await limiter.acquire(name) == 0.0
            assert await limiter.acquire(name) > 0
    finally:
        await limiter.redis.aclose()
