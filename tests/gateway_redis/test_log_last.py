"""`StreamLog.last`: an answer's latest event in one step, from either log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from dskit.gateway.answers._codec import answer_result
from dskit.gateway.backends._log import LogEntry, MemoryStreamLog, StreamLog, UnknownAnswerError
from dskit.gateway.backends._redis_log import RedisLogSettings, RedisStreamLog, connect


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def any_log(request: pytest.FixtureRequest) -> AsyncIterator[StreamLog]:
    if request.param == "memory":
        yield MemoryStreamLog()
        return
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    # a small read batch: reading the whole log would take several round trips
    log = RedisStreamLog(connect(url), RedisLogSettings(namespace=prefix, read_batch=2))
    yield log
    await log.aclose()


async def _started(log: StreamLog) -> str:
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1")
    assert await log.lease(answer_id, "w1", 30.0)
    return answer_id


async def test_last_is_the_latest_event_and_not_the_end_marker(any_log: StreamLog) -> None:
    answer_id = await _started(any_log)
    assert await any_log.last(answer_id) is None
    for n in range(5):
        await any_log.append(answer_id, "content", orjson.dumps({"text": f"w{n}"}))
    assert await any_log.last(answer_id) == LogEntry(5, "content", b'{"text":"w4"}')
    await any_log.append(answer_id, "done", b'{"finish_reason":"stop"}')
    await any_log.finish(answer_id)
    assert await any_log.last(answer_id) == LogEntry(6, "done", b'{"finish_reason":"stop"}')


async def test_last_of_an_unknown_answer_raises(any_log: StreamLog) -> None:
    with pytest.raises(UnknownAnswerError):
        await any_log.last(uuid.uuid4().hex)


async def test_the_result_of_a_long_answer_is_its_last_event(any_log: StreamLog) -> None:
    answer_id = await _started(any_log)
    for n in range(7):  # more events than one read batch of the Redis log
        await any_log.append(answer_id, "content", orjson.dumps({"text": f"w{n}"}))
    done = {"finish_reason": "stop", "usage": None, "message": {"content": "w0w1"}}
    await any_log.append(answer_id, "done", orjson.dumps(done))
    await any_log.finish(answer_id)
    result = await answer_result(any_log, answer_id, "s1")
    assert result.status == "completed" and result.finish_reason == "stop"
    assert result.message is not None and result.message.content == "w0w1"
