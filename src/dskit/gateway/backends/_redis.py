"""The shared parts of a fleet on one Redis (`--redis URL`): the answer log, rate limiter
and cache, and whether Redis answers
(`/readyz`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dskit.gateway._settings import RateLimit
from dskit.gateway.backends._cache import RedisCache
from dskit.gateway.backends._limits import RateLimiter
from dskit.gateway.backends._redis_limit import RedisRateLimiter
from dskit.gateway.backends._redis_log import RedisLogSettings, RedisStreamLog, connect

if TYPE_CHECKING:
    import redis.asyncio

READY_PING_SECONDS = 1.0


@dataclass(slots=True)
class RedisParts:
    """The shared parts of a fleet, all on one Redis connection pool."""

    client: redis.asyncio.Redis
    log: RedisStreamLog
    limiter: RateLimiter | None
    cache: RedisCache

    @classmethod
    def build(
        cls, url: str, *, namespace: str, lease_seconds: float, answer_ttl: float,
        rate_limit: RateLimit | None,
    ) -> RedisParts:  # fmt: skip
        client = connect(url)
        log_settings = RedisLogSettings(
            namespace=namespace, lease_ttl=lease_seconds, answer_ttl=answer_ttl
        )
        limiter = None
        if rate_limit is not None:
            limiter = RedisRateLimiter(client, rate_limit, namespace=namespace)
        log = RedisStreamLog(client, log_settings)
        return cls(client, log, limiter, RedisCache(client, namespace))

    async def aclose(self) -> None:
        await self.log.aclose()


async def redis_answers(client: redis.asyncio.Redis) -> bool:
    """Whether Redis answers a PING within a second (for /readyz)."""
    try:
        async with asyncio.timeout(READY_PING_SECONDS):
            await client.ping()
    except Exception:  # unreachable, timed out, refused: not ready, whatever the reason
        return False
    return True
