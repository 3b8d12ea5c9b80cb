"""Takeover without a gateway: a dead writer's answer is continued by another instance
through prefix completion on the simulator, and the log holds the unbroken answer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from dskit.client._async import AsyncDeepSeek
from dskit.gateway._redis_log import RedisStreamLog
from dskit.gateway._takeover import (
    PrefixContinuation,
    TakeoverJob,
    TakeoverLoop,
    beta_client_url,
    job_headers,
    prefix_messages,
)
from tests.gateway_redis.test_redis_log import eventually

pytestmark = pytest.mark.redis
MESSAGES = [{"role": "user", "content": "Tell me a long story about rivers and mountains"}]


def content_of(entries: list[Any]) -> str:
    return "".join(orjson.loads(e.data)["text"] for e in entries if e.kind == "content")


async def unbroken(sim: Any) -> str:
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        return (await client.chat(MESSAGES, model="deepseek-chat", temperature=0.0)).content


async def dead_writer(log: RedisStreamLog, sim: Any, pieces: int) -> str:
    """An instance that logs `pieces` content events, then dies (its log closes unfinished,
    its lease left to lapse)."""
    answer_id = uuid.uuid4().hex
    job = TakeoverJob(
        "s1", "deepseek-chat", MESSAGES, {"temperature": 0.0}, {"x-sim-token-ms": "0"}
    )
    await log.create(answer_id, "s1", job=job.encode())
    assert await log.lease(answer_id, "dead", 1.0)
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        async with client.stream(MESSAGES, model="deepseek-chat", temperature=0.0) as stream:
            logged = 0
            async for event in stream:
                if event.type == "content" and logged < pieces:
                    await log.append(answer_id, "content", orjson.dumps({"text": event.text}))
                    logged += 1
    await log.aclose()  # the process is gone: nobody renews or releases its lease
    return answer_id


def test_job_and_prefix_shapes() -> None:
    job = TakeoverJob("s", "deepseek-reasoner", MESSAGES, {"max_tokens": 5}, {"x-sim-a": "1"})
    assert TakeoverJob.decode(job.encode()) == job
    assert prefix_messages(job, "Hel", "")[-1] == {
        "role": "assistant",
        "content": "Hel",
        "prefix": True,
    }
    assert prefix_messages(job, "", "thinking")[-1]["reasoning_content"] == "thinking"
    assert beta_client_url("http://h:1/v1") == beta_client_url("http://h:1/") == "http://h:1/beta"
    headers = {"X-Sim-Token-Ms": "5", "Authorization": "Bearer sk-secret"}
    assert job_headers(headers) == {"X-Sim-Token-Ms": "5"}


@pytest.mark.parametrize("pieces", [0, 1, 7])
async def test_orphan_is_continued_into_the_unbroken_answer(
    log: RedisStreamLog, other_log: RedisStreamLog, sim: Any, pieces: int
) -> None:
    expected = await unbroken(sim)
    answer_id = await dead_writer(log, sim, pieces)
    beta = AsyncDeepSeek(api_key="sk-test", base_url=beta_client_url(sim.base_url))
    adopted: list[str] = []

    async def adopt(taken: str) -> None:
        partial = await other_log.partial(taken)
        assert partial.pieces == pieces
        job = TakeoverJob.decode(await other_log.job(taken))
        continuation = PrefixContinuation(beta, job, partial)
        async for event in continuation.events():
            if event.type == "content":
                await other_log.append(taken, "content", orjson.dumps({"text": event.text}))
        assert continuation.result is not None
        assert continuation.result.content == expected
        await other_log.append(taken, "done", b"{}")
        await other_log.finish(taken)
        adopted.append(taken)

    loop = TakeoverLoop(other_log, "alive", adopt, interval=0.05)
    loop.start()
    try:
        await eventually(lambda: asyncio.sleep(0, result=adopted), within=10)
    finally:
        await loop.stop()
        await beta.aclose()
    assert adopted == [answer_id]
    piece = await other_log.read(answer_id)
    assert piece.finished
    assert [e.seq for e in piece.entries] == list(range(1, len(piece.entries) + 1))
    assert content_of(piece.entries) == expected
    assert await other_log.orphans() == []


async def test_an_answer_saved_before_its_instance_died_is_not_generated_twice() -> None:
    from dskit.client._types import Usage
    from dskit.gateway._redis_log import PartialAnswer
    from dskit.gateway._takeover import RemainderSource, saved_answer
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
    from dskit.gateway._redis_log import PartialAnswer

    params = {"temperature": 0.0, "max_tokens": 8}
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        whole = await client.chat(MESSAGES, model="deepseek-chat", **params)
        async with client.stream(MESSAGES, model="deepseek-chat", **params) as stream:
            pieces = [e.text async for e in stream if e.type == "content"][:3]
    assert whole.finish_reason == "length"
    partial = PartialAnswer(3, "".join(pieces), "", False, False, "content", pieces=3)
    job = TakeoverJob("s", "deepseek-chat", MESSAGES, params)
    async with AsyncDeepSeek(api_key="sk-test", base_url=beta_client_url(sim.base_url)) as beta:
        continuation = PrefixContinuation(beta, job, partial)
        async for _ in continuation.events():
            pass
    assert continuation.result is not None
    assert continuation.result.content == whole.content
    assert continuation.result.finish_reason == "length"
