"""Takeover without a gateway: a dead writer's answer is continued by another instance
through prefix completion on the simulator, and the log holds the unbroken answer."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import orjson
import pytest

from dskit.client._async import AsyncDeepSeek
from dskit.gateway.answers._takeover import (
    PrefixContinuation,
    TakeoverJob,
    TakeoverLoop,
    job_headers,
)
from dskit.gateway.backends._redis_log import RedisStreamLog
from tests.client.conftest import faults_once
from tests.gateway_redis.test_redis_log import eventually

pytestmark = pytest.mark.redis
MESSAGES = [{"role": "user", "content": "Tell me a long story about rivers and mountains"}]


def content_of(entries: list[Any]) -> str:
    return "".join(orjson.loads(e.data)["text"] for e in entries if e.kind == "content")


async def unbroken(sim: Any) -> str:
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        return (
            await client.chat(MESSAGES, model="deepseek-flash", thinking=False, temperature=0.0)
        ).content


async def dead_writer(
    log: RedisStreamLog, sim: Any, pieces: int, headers: dict[str, str] | None = None
) -> str:
    """An instance that logs `pieces` content events, then dies (its log closes unfinished,
    its lease left to lapse). `headers` go with the job: the continuation sends them."""
    answer_id = uuid.uuid4().hex
    headers = {"x-sim-token-ms": "0", **(headers or {})}
    job = TakeoverJob("s1", "deepseek-chat", MESSAGES, {"temperature": 0.0}, headers)
    await log.create(answer_id, "s1", job=job.encode())
    assert await log.lease(answer_id, "dead", 1.0)
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        async with client.stream(
            MESSAGES, model="deepseek-flash", thinking=False, temperature=0.0
        ) as stream:
            logged = 0
            async for event in stream:
                if event.type == "content" and logged < pieces:
                    await log.append(answer_id, "content", orjson.dumps({"text": event.text}))
                    logged += 1
    await log.aclose()  # the process is gone: nobody renews or releases its lease
    return answer_id


def test_job_shape() -> None:
    """(The prefix message's shape is the client's: tests/client/test_continue.py.)"""
    job = TakeoverJob("s", "deepseek-reasoner", MESSAGES, {"max_tokens": 5}, {"x-sim-a": "1"})
    assert TakeoverJob.decode(job.encode()) == job
    headers = {"X-Sim-Token-Ms": "5", "Authorization": "Bearer sk-secret"}
    assert job_headers(headers) == {"X-Sim-Token-Ms": "5"}


@pytest.mark.parametrize(
    ("pieces", "faults"),
    [(0, {}), (1, {}), (7, {}), (7, {"Drop_After_Events": 3})],
    ids=["0", "1", "7", "7-and-the-continuation-breaks"],
)
async def test_orphan_is_continued_into_the_unbroken_answer(
    log: RedisStreamLog, other_log: RedisStreamLog, sim: Any, pieces: int, faults: dict[str, Any]
) -> None:
    expected = await unbroken(sim)
    answer_id = await dead_writer(log, sim, pieces, faults_once(**faults) if faults else None)
    client = AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url)
    adopted: list[str] = []

    async def adopt(taken: str) -> None:
        partial = await other_log.partial(taken)
        assert partial.pieces == pieces
        job = TakeoverJob.decode(await other_log.job(taken))
        continuation = PrefixContinuation(client, job, partial)
        async for event in continuation.events():
            if event.type == "content":
                await other_log.append(taken, "content", orjson.dumps({"text": event.text}))
        result = await continuation.final()
        assert result.content == expected
        assert result.resumes == (1 if faults else 0)
        await other_log.append(taken, "done", b"{}")
        await other_log.finish(taken)
        adopted.append(taken)

    loop = TakeoverLoop(other_log, "alive", adopt, interval=0.05)
    loop.start()
    try:
        await eventually(lambda: asyncio.sleep(0, result=adopted), within=10)
    finally:
        await loop.stop()
        await client.aclose()
    assert adopted == [answer_id]
    piece = await other_log.read(answer_id)
    assert piece.finished
    assert [e.seq for e in piece.entries] == list(range(1, len(piece.entries) + 1))
    assert content_of(piece.entries) == expected
    assert await other_log.orphans() == []


async def test_an_answer_saved_before_its_instance_died_is_not_generated_twice() -> None:
    from dskit.client._types import Usage
    from dskit.gateway.answers._takeover import RemainderSource, saved_answer
    from dskit.gateway.backends._log import PartialAnswer
    from dskit.store import StoredMessage

    job = TakeoverJob("s", "deepseek-chat", MESSAGES, history=1)
    partial = PartialAnswer(3, "Hello, ", "", False, False, "content")
    user = StoredMessage({"role": "user", "content": MESSAGES[0]["content"]})
    answer = StoredMessage({"role": "assistant", "content": "Hello, world."},
                           usage=Usage(5, 3, 8).to_dict())  # fmt: skip
    assert saved_answer(job, [user], partial) is None, "not saved yet: continue upstream"
    saved = saved_answer(job, [user, answer], partial)
    assert saved is not None and saved.content == "Hello, world."
    other = StoredMessage({"role": "assistant", "content": "Something else"})
    assert saved_answer(job, [user, other], partial) is None
    source = RemainderSource(saved, partial)
    events = [e async for e in source.events()]
    assert [e.type for e in events] == ["content", "usage"]
    assert events[0].text == "world."  # type: ignore[union-attr]
    assert (await source.final()).usage == Usage(5, 3, 8)


async def test_continuation_keeps_the_original_max_tokens(sim: Any) -> None:
    """The pieces logged before the takeover count against `max_tokens`, as in the
    client's own resume: the whole answer is as long as an unbroken one, not longer."""
    from dskit.gateway.backends._log import PartialAnswer

    params = {"temperature": 0.0, "max_tokens": 8}
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        whole = await client.chat(MESSAGES, model="deepseek-flash", thinking=False, **params)
        async with client.stream(
            MESSAGES, model="deepseek-flash", thinking=False, **params
        ) as stream:
            pieces = [e.text async for e in stream if e.type == "content"][:3]
    assert whole.finish_reason == "length"
    partial = PartialAnswer(3, "".join(pieces), "", False, False, "content", pieces=3)
    job = TakeoverJob("s", "deepseek-chat", MESSAGES, params)
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        continuation = PrefixContinuation(client, job, partial)
        async for _ in continuation.events():
            pass
        result = await continuation.final()
    assert result.content == whole.content
    assert result.finish_reason == "length"


async def test_an_orphan_whose_session_is_gone_is_ended_not_taken_over_again(
    gateway_factory: Any, log: RedisStreamLog, other_log: RedisStreamLog, sim: Any,
    redis_url: str, redis_prefix: str,
) -> None:  # fmt: skip
    """Its session was deleted while its instance was down: the taking instance ends
    the answer with an error instead of releasing it for every scan to try again."""
    answer_id = await dead_writer(log, sim, 2)  # its session "s1" is in no store
    gateway_factory(redis=redis_url, redis_namespace=redis_prefix, takeover_interval=0.05)

    async def ended() -> bool:
        return (await other_log.read(answer_id)).finished

    await eventually(ended, within=15)
    entries = (await other_log.read(answer_id)).entries
    assert [e.kind for e in entries] == ["content", "content", "error"]
    assert orjson.loads(entries[-1].data)["status"] == 404
    assert await other_log.orphans() == []


async def test_the_takeover_loop_always_stops(log: RedisStreamLog) -> None:
    """Stopped at random points of its scans (a cancellation redis-py may swallow at the
    end of a command), the loop ends every time: a gateway's shutdown never hangs on it."""

    async def adopt(answer_id: str) -> None:
        raise AssertionError("nothing to adopt")

    rng = random.Random(11)
    for _ in range(40):
        loop = TakeoverLoop(log, "w1", adopt, interval=0.0005)
        loop.start()
        await asyncio.sleep(rng.uniform(0.0, 0.01))
        running = loop._task
        assert running is not None
        stopping = asyncio.create_task(loop.stop())
        stopped, _ = await asyncio.wait({stopping}, timeout=2.0)
        while not running.done():  # on failure, end it anyway: fail, do not hang
            running.cancel()
            await asyncio.sleep(0.01)
        await asyncio.gather(stopping, return_exceptions=True)
        assert stopped, "the takeover loop did not stop"
