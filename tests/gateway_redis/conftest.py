"""Fixtures for the Redis-backed gateway parts: one key namespace per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from dskit.gateway.backends._redis_batch import ScriptBatcher
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


def replied(
    batcher: ScriptBatcher, keys: Sequence[str], args: Sequence[Any]
) -> asyncio.Future[Any]:
    """A call posted to `batcher`, as the future of its reply (or of its batch's error)."""
    reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def landed(value: Any, exc: BaseException | None) -> None:
        if exc is None:
            reply.set_result(value)
        else:
            reply.set_exception(exc)

    batcher.post(keys, args, landed)
    return reply
