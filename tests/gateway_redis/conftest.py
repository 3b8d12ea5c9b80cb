"""Fixtures for the Redis-backed gateway parts: one key namespace per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dskit.gateway.backends._redis_log import RedisLogSettings, RedisStreamLog, connect
from tests.gateway.conftest import gateway_factory, recording_upstream  # noqa: F401  (fixtures, shared)

pytestmark = pytest.mark.redis


async def _instance_log(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStreamLog]:
    """One instance's view of the test's log, on its own connection."""
    stream_log = RedisStreamLog(
        connect(redis_url), RedisLogSettings(namespace=redis_prefix, lease_ttl=0.6)
    )
    yield stream_log
    await stream_log.aclose()


log = pytest.fixture(_instance_log, name="log")
other_log = pytest.fixture(_instance_log, name="other_log")  # a second instance, same log
