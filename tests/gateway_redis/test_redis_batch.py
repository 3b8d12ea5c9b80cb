"""ScriptBatcher against a real Redis: how its calls are grouped into script runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dskit.gateway.backends._redis_batch import MAX_BATCH, ScriptBatcher
from dskit.gateway.backends._redis_log import connect
from tests.gateway_redis.conftest import replied

pytestmark = pytest.mark.redis

# one reply per call: its own argument
ECHO = "local out = {} for i = 1, #KEYS do out[i] = ARGV[i] end return out"


async def _at_once(call: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    return await call()


@pytest.fixture(name="spaced")
async def _spaced(redis_url: str) -> AsyncIterator[ScriptBatcher]:
    """A batcher whose spacing (half a second) no loop iteration comes near."""
    client = connect(redis_url)
    yield ScriptBatcher(client, ECHO, 1, _at_once, spacing=0.5)
    await client.aclose()


async def test_calls_that_keep_coming_wait_for_one_spaced_batch(spaced: ScriptBatcher) -> None:
    """A lone call goes out at once; calls made one loop iteration apart while a batch
    has just gone out gather into the next one, sent `spacing` after it (unspaced, each
    went out alone as soon as the previous batch returned)."""
    started = time.monotonic()
    assert await replied(spaced, ["k"], ["lone"]) == b"lone"
    assert time.monotonic() - started < spaced.spacing / 2  # it did not wait the spacing
    before = spaced.batches
    replies = []
    for n in range(10):
        replies.append(replied(spaced, ["k"], [f"call {n}"]))
        await asyncio.sleep(0)  # each call in a loop iteration of its own
    assert await asyncio.gather(*replies) == [f"call {n}".encode() for n in range(10)]
    assert spaced.batches - before == 1
    assert time.monotonic() - started >= spaced.spacing  # the batch waited its turn


async def test_a_full_batch_goes_out_without_waiting(spaced: ScriptBatcher) -> None:
    """Calls beyond a whole batch do not wait for the spacing: a full batch cannot grow."""
    await replied(spaced, ["k"], ["first"])  # a batch just went out: the next one would wait
    started = time.monotonic()
    replies = [replied(spaced, ["k"], [str(n)]) for n in range(2 * MAX_BATCH)]
    assert await asyncio.gather(*replies) == [str(n).encode() for n in range(2 * MAX_BATCH)]
    assert time.monotonic() - started < spaced.spacing / 2
