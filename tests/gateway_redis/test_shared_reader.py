"""The shared reader: waiting readers cost no Redis connection each, resume stays exact,
and 1,000 answers stream at once through one instance."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import httpx2
import orjson
import pytest

from dskit.gateway.backends._redis_log import RedisStreamLog
from dskit.gateway.backends._redis_reader import SharedReader
from dskit.store._redis import POOL_SIZE

pytestmark = pytest.mark.redis


def _pooled(log: RedisStreamLog) -> int:
    pool: Any = log.redis.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


async def _clients(log: RedisStreamLog) -> int:
    return len(await log.redis.client_list())


def waiting(reader: SharedReader) -> int:
    """Readers parked on the shared reader now (none holds a connection)."""
    return sum(len(w.waiters) for shard in reader._shards for w in shard.watches.values())


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds, within a deadline; never a fixed pause."""
    async with asyncio.timeout(15):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.01)


async def test_many_waiting_readers_use_a_bounded_number_of_connections(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """600 readers wait on 300 running answers another instance writes (two each, at
    different cursors): the instance holds a handful of connections, not one per reader,
    and every reader gets exactly the entries after its cursor, in order, once."""
    answers = [f"a{n}" for n in range(300)]
    for answer_id in answers:
        await other_log.create(answer_id, f"s-{answer_id}", owner="w1")
        await other_log.append(answer_id, "content", b'{"text":"0"}')
    before = await _clients(log) - _pooled(other_log)  # this instance's connections

    async def follow(answer_id: str, after: int) -> list[int]:
        seen: list[int] = []
        while True:
            piece = await log.read(answer_id, after, wait=10)
            seen.extend(e.seq for e in piece.entries)
            after = seen[-1] if seen else after
            if piece.finished:
                return seen

    readers = [asyncio.create_task(follow(a, cursor)) for a in answers for cursor in (0, 1)]
    await until(lambda: waiting(log.reader) == len(readers))  # every reader is waiting now
    pool: Any = log.redis.connection_pool
    in_use = len(pool._in_use_connections)  # lease renewals (every 0.2 s here) come and go
    assert in_use <= 16, f"{in_use} pooled connections in use: waiting readers hold none"
    assert log.reader.connections <= log.reader.max_readers
    opened = await _clients(log) - _pooled(other_log) - before  # grown for first reads
    assert opened <= POOL_SIZE + log.reader.max_readers + 1 < len(readers)
    for round_ in range(3):
        for answer_id in answers:
            await other_log.append(answer_id, "content", orjson.dumps({"text": str(round_)}))
    for answer_id in answers:
        await other_log.finish(answer_id)
    seen = await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
    for n, got in enumerate(seen):
        assert got == ([1, 2, 3, 4] if n % 2 == 0 else [2, 3, 4])
    assert _pooled(log) <= POOL_SIZE


async def test_a_reader_added_while_the_shard_blocks_is_woken_at_once(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """A second answer's reader joins while the shared XREAD blocks on the first (both
    written by another instance): its event arrives in milliseconds, not after the block
    timeout."""
    for answer_id in ("first", "second"):
        await other_log.create(answer_id, f"s-{answer_id}", owner="w1")
    first = asyncio.create_task(log.read("first", 0, wait=10))
    await until(lambda: waiting(log.reader) == 1 and all(s.blocked for s in log.reader._shards))
    second = asyncio.create_task(log.read("second", 0, wait=10))
    await until(lambda: waiting(log.reader) == 2)
    began = time.monotonic()
    await other_log.append("second", "content", b'{"text":"x"}')
    piece = await asyncio.wait_for(second, timeout=3)
    assert [e.seq for e in piece.entries] == [1]
    assert time.monotonic() - began < 1.0
    await other_log.finish("first")
    assert (await first).finished


async def test_shards_split_logs_and_stay_bounded(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """With 4 logs per XREAD and at most 3 connections, 40 waiting answers (another
    instance writes them) spread over three shards (past the bound they share the least
    loaded), and all are woken."""
    reader = SharedReader(log.redis, f"{log.settings.namespace}-t", keys_per_read=4, max_readers=3)
    log.reader, old = reader, log.reader
    try:
        answers = [f"b{n}" for n in range(40)]
        for answer_id in answers:
            await other_log.create(answer_id, f"s-{answer_id}", owner="w1")
        tasks = [asyncio.create_task(log.read(a, 0, wait=10)) for a in answers]
        await until(lambda: waiting(reader) == len(tasks))
        assert reader.connections == 3
        for answer_id in answers:
            await other_log.append(answer_id, "content", b'{"text":"y"}')
        pieces = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        assert all([e.seq for e in p.entries] == [1] for p in pieces)
    finally:
        log.reader = old
        await reader.aclose()


def test_busy_is_not_down() -> None:
    """A pool that waited too long is `store_busy`; a refused connection `store_unavailable`."""
    from redis.exceptions import ConnectionError, MaxConnectionsError, TimeoutError

    from dskit.gateway._errors import redis_down

    busy = [ConnectionError("No connection available."), MaxConnectionsError("Too many"),
            TimeoutError("Timeout reading from socket")]  # fmt: skip
    down = [ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
            TimeoutError("Timeout connecting to server")]  # fmt: skip
    assert [getattr(redis_down(e), "code", None) for e in busy] == ["store_busy"] * 3
    assert [getattr(redis_down(e), "code", None) for e in down] == ["store_unavailable"] * 2


async def _one_answer(http: httpx2.AsyncClient, n: int) -> tuple[str, str, int]:
    """Stream one answer; returns (the streamed text, the done event's text, status)."""
    params = {"thinking": False, "max_tokens": 12}
    created = await http.post("/v1/sessions", json={"parameters": params})
    if created.status_code not in (200, 201):
        return "", created.text, created.status_code
    sid = created.json()["id"]
    body = {"content": f"Say something about topic {n % 7}", "stream": True}
    text: list[str] = []
    final = ""
    async with http.stream("POST", f"/v1/sessions/{sid}/messages", json=body) as response:
        if response.status_code != 200:
            return "", (await response.aread()).decode(), response.status_code
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data = orjson.loads(line.partition(":")[2])
                if event == "content":
                    text.append(data["text"])
                elif event == "done":
                    final = data["message"]["content"]
                elif event == "error":
                    return "".join(text), str(data), int(data.get("status", 500))
    return "".join(text), final, 200


@pytest.mark.slow
def test_a_thousand_answers_at_once_through_one_instance(
    gateway_factory: Any, sim_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    """1,000 streamed answers started at once through one gateway on Redis: every one
    completes with its whole text and none is told 503 (the pool used to run dry at
    about 100, each waiting reader holding a connection)."""
    sim = sim_factory(token_ms=400, ttft_ms=100)
    gateway = gateway_factory(upstream=sim.base_url, redis=redis_url, redis_namespace=redis_prefix)
    count = 1000

    async def run() -> list[tuple[str, str, int]]:
        limits = httpx2.Limits(max_connections=count + 50, max_keepalive_connections=count + 50)
        timeout = httpx2.Timeout(120.0)
        async with httpx2.AsyncClient(base_url=gateway.url, limits=limits, timeout=timeout) as http:
            return await asyncio.gather(*(_one_answer(http, n) for n in range(count)))

    results = asyncio.run(run())
    failed = [final for _, final, status in results if status != 200]
    assert not failed, (len(failed), failed[:3])
    for streamed, final, _ in results:
        assert streamed and streamed == final
    log = gateway.gw.log
    assert log.reader.connections <= log.reader.max_readers
