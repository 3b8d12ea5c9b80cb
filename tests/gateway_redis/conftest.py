"""Fixtures for the Redis-backed gateway parts: one key namespace per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dskit.gateway._redis_log import RedisLogSettings, RedisStreamLog, connect
from tests.gateway.conftest import gateway_factory  # noqa: F401  (a fixture, shared)

pytestmark = pytest.mark.redis


@pytest.fixture
async def log(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStreamLog]:
    stream_log = RedisStreamLog(
        connect(redis_url), RedisLogSettings(namespace=redis_prefix, lease_ttl=0.6)
    )
    yield stream_log
    await stream_log.aclose()


@pytest.fixture
async def other_log(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStreamLog]:
    """A second instance's view of the same log (its own connection)."""
    stream_log = RedisStreamLog(
        connect(redis_url), RedisLogSettings(namespace=redis_prefix, lease_ttl=0.6)
    )
    yield stream_log
    await stream_log.aclose()
