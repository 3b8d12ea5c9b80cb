"""Rate limits per principal: a `RateLimiter` protocol and an in-memory token bucket.

The protocol is one async call so a Redis implementation (an atomic Lua token bucket
shared by every instance) can replace the memory one without touching the routes.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from dskit.gateway._settings import RateLimit


@runtime_checkable
class RateLimiter(Protocol):
    """Take `cost` tokens for `key`; return 0.0 when allowed, else seconds to wait."""

    async def acquire(self, key: str, cost: float = 1.0) -> float: ...


class NoRateLimit:
    """The limiter used when no limit is configured."""

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        return 0.0


class MemoryRateLimiter:
    """A token bucket per key in this process: refills at `rate`, holds at most `burst`."""

    def __init__(self, limit: RateLimit, max_keys: int = 100_000) -> None:
        self._limit = limit
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_keys = max_keys

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(self._limit.burst), now))
        tokens = min(float(self._limit.burst), tokens + (now - stamp) * self._limit.rate)
        if tokens >= cost:
            self._remember(key, tokens - cost, now)
            return 0.0
        self._remember(key, tokens, now)
        return (cost - tokens) / self._limit.rate

    def _remember(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key] = (tokens, now)


def make_rate_limiter(limit: RateLimit | None) -> RateLimiter:
    return MemoryRateLimiter(limit) if limit is not None else NoRateLimit()
