"""Typed configuration: timeouts, retries, pacing, and the clock they run on."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_BASE_URL = "https://api.deepseek.com"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Timeout:
    """How long to wait, in seconds (None: no limit).

    connect: to open a connection. read: for any bytes at all from the server.
    idle: between data events of a stream; keep-alive comments sent while the server
    queues the request do NOT reset it. total: the whole call, retries and resumes included.
    """

    connect: float | None = 10.0
    read: float | None = 120.0
    idle: float | None = 300.0
    total: float | None = None

    @classmethod
    def coerce(cls, value: Timeout | float | None) -> Timeout:
        if value is None:
            return cls()
        if isinstance(value, Timeout):
            return value
        return cls(connect=min(float(value), 10.0), read=float(value), idle=float(value))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: delay = U(0, min(max_delay, base * 2**n)).

    A `Retry-After` or `retry-after-ms` header from the server replaces the computed delay.
    Only failures before any output are retried; broken streams are resumed instead.
    """

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    statuses: frozenset[int] = RETRY_STATUSES
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry_number` (0 for the first retry)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.max_delay, self.base_delay * (2.0**retry_number))
        return self.jitter() * ceiling

    def retries_status(self, status_code: int) -> bool:
        return status_code in self.statuses or status_code >= 500


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits: pooled connections, and the largest SSE event accepted.

    An event larger than `max_event_bytes` ends the stream with a clear error instead of
    buffering without bound.
    """

    max_connections: int = 100
    max_keepalive_connections: int = 20
    max_event_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Pace:
    """Token-bucket pacing of delivered text: at most `chars_per_second`, bursts of `burst`."""

    chars_per_second: float
    burst: int = 32


class Clock(Protocol):
    """Where time comes from; tests inject a fake one to check retry timing exactly."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: monotonic time, real sleeps."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds))
