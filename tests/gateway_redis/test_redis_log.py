"""RedisStreamLog against a real Redis: numbering, waiting readers, leases and takeover."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from dskit.gateway.backends._log import MemoryStreamLog, StreamLog, UnknownAnswerError
from dskit.gateway.backends._redis_log import (
    LeaseLostError,
    RedisLogSettings,
    RedisStreamLog,
    connect,
)
from tests.conftest import RedisServer
from tests.gateway_redis.conftest import replied

pytestmark = pytest.mark.redis


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5.0) -> Any:
    """Poll an async condition until it holds or the deadline passes."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def blocked_reader(log: RedisStreamLog) -> None:
    """Wait until a reader is blocked in Redis (so what follows must wake it)."""

    async def blocked() -> bool:
        return int((await log.redis.info("clients"))["blocked_clients"]) > 0

    await eventually(blocked)


def text(value: str) -> bytes:
    return orjson.dumps({"text": value})


async def started(log: RedisStreamLog, worker: str = "w1", session: str = "s1") -> str:
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, session, job=b'{"x": 1}')
    assert await log.lease(answer_id, worker, 30.0)
    return answer_id


def test_satisfies_the_protocol(log: RedisStreamLog) -> None:
    assert isinstance(log, StreamLog)
    assert "redis://" not in repr(log)


async def test_numbered_events_readable_from_another_instance(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    answer_id = await started(log)
    seqs = [await log.append(answer_id, "content", text(c)) for c in "abcde"]
    assert seqs == [1, 2, 3, 4, 5]
    whole = await other_log.read(answer_id)
    assert [e.seq for e in whole.entries] == seqs and not whole.finished
    after = await other_log.read(answer_id, after=3)
    assert [orjson.loads(e.data)["text"] for e in after.entries] == ["d", "e"]
    assert after.entries[0].kind == "content"
    assert await other_log.active("s1") == answer_id
    info = await other_log.info(answer_id)
    assert info is not None and info.session_id == "s1" and not info.finished
    assert await other_log.job(answer_id) == b'{"x": 1}'


async def test_waiting_reader_wakes_on_append_and_on_finish(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    answer_id = await started(log)
    reader = asyncio.create_task(other_log.read(answer_id, after=0, wait=10.0))
    await blocked_reader(log)
    began = time.monotonic()
    await log.append(answer_id, "content", text("hi"))
    piece = await asyncio.wait_for(reader, 5)
    assert [e.seq for e in piece.entries] == [1]
    assert time.monotonic() - began < 2.0
    reader = asyncio.create_task(other_log.read(answer_id, after=1, wait=10.0))
    await blocked_reader(log)
    await log.finish(answer_id)
    piece = await asyncio.wait_for(reader, 5)
    assert piece.entries == [] and piece.finished
    assert await other_log.active("s1") is None
    info = await other_log.info(answer_id)
    assert info is not None and info.finished


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_cursor_past_the_end_still_sees_the_answer_finish(
    log: RedisStreamLog, other_log: RedisStreamLog, backend: str
) -> None:
    """A long poll whose `after` is past the answer's last event (a client that asked for
    "after 40" of an answer that ended at 2) is told the answer finished, as the memory log
    tells it: at once once it has, and as it does while the poll waits. The Redis log
    only looked for its end marker after the cursor, so it answered "not finished" after
    the whole wait, every time."""
    writer: StreamLog = MemoryStreamLog() if backend == "memory" else log
    reader: StreamLog = writer if backend == "memory" else other_log
    answer_id = uuid.uuid4().hex
    await writer.create(answer_id, "s1", "w1")
    for piece in "ab":
        await writer.append(answer_id, "content", text(piece))
    waiting = asyncio.create_task(reader.read(answer_id, after=40, wait=10.0))
    if backend == "redis":
        await blocked_reader(log)
    began = time.monotonic()
    await writer.finish(answer_id)
    piece = await asyncio.wait_for(waiting, 5)
    assert piece.entries == [] and piece.finished
    assert time.monotonic() - began < 2.0
    began = time.monotonic()
    again = await reader.read(answer_id, after=40, wait=10.0)
    assert again.entries == [] and again.finished and time.monotonic() - began < 2.0


async def test_unfinished_and_finished_answers_expire(log: RedisStreamLog) -> None:
    answer_id = await started(log)
    await log.append(answer_id, "done", b"{}")
    base = f"{log.settings.namespace}:answer:{{{answer_id}}}"
    for key in (f"{base}:meta", f"{base}:log"):  # a safety net if nobody ever finishes it
        assert log.settings.answer_ttl < await log.redis.ttl(key) <= log.settings.unfinished_ttl
    await log.finish(answer_id)
    for key in (f"{base}:meta", f"{base}:log"):
        assert 0 < await log.redis.ttl(key) <= log.settings.answer_ttl
    with pytest.raises(LeaseLostError):
        await log.append(answer_id, "content", text("late"))


async def test_unknown_and_malformed_answers(log: RedisStreamLog) -> None:
    with pytest.raises(UnknownAnswerError):
        await log.read("nope")
    assert await log.info("nope") is None
    assert await log.info("bad{id}") is None
    assert await log.active("bad}") is None
    with pytest.raises(UnknownAnswerError):
        await log.lease("nope", "w", 1.0)
    with pytest.raises(ValueError, match="namespace"):
        RedisLogSettings(namespace="a{b}")


async def test_append_needs_the_lease(log: RedisStreamLog, other_log: RedisStreamLog) -> None:
    answer_id = await started(log)
    assert not await other_log.lease(answer_id, "w2", 30.0)
    with pytest.raises(LeaseLostError):
        await other_log.append(answer_id, "content", text("intruder"))
    assert [e.seq for e in (await log.read(answer_id)).entries] == []


async def test_lease_is_renewed_while_the_instance_lives(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    answer_id = await started(log)
    await asyncio.sleep(log.settings.lease_ttl * 2.5)  # several lease periods, on purpose
    assert await other_log.orphans() == []
    assert not await other_log.lease(answer_id, "w2", 30.0)
    await log.append(answer_id, "content", text("still mine"))


async def test_dead_instance_answer_is_taken_over_and_zombie_fenced(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    answer_id = await started(log)
    for piece in ("Hel", "lo, "):
        await log.append(answer_id, "content", text(piece))
    await log.append(answer_id, "reasoning", text("think"))
    log._renewers[answer_id].cancel()  # the instance freezes: its lease lapses
    orphans = await eventually(other_log.orphans)
    assert orphans == [answer_id]
    assert await other_log.lease(answer_id, "w2", 30.0)
    assert await other_log.orphans() == []
    partial = await other_log.partial(answer_id)
    assert (partial.seq, partial.content, partial.reasoning) == (3, "Hello, ", "think")
    assert not partial.has_tool_calls and not partial.finished
    with pytest.raises(LeaseLostError):  # the frozen instance wakes up: fenced off
        await log.append(answer_id, "content", text("zombie"))
    assert await other_log.append(answer_id, "content", text("world")) == 4
    await other_log.finish(answer_id)
    assert await other_log.orphans() == []


async def test_an_answer_is_born_leased_so_no_scan_sees_it_unowned(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """Creating and then leasing in two steps left a window in which another instance's
    scan took a live answer over (seen under load in the Redis restart test)."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", job=b"{}", owner="w1")
    assert log.holds(answer_id)
    assert await other_log.orphans() == []
    assert not await other_log.lease(answer_id, "w2", 30.0)
    assert await log.append(answer_id, "content", text("mine")) == 1
    assert await log.lease(answer_id, "w1", 30.0), "the owner's own lease call renews it"


async def test_finish_and_release_leave_no_lease_and_no_active_mark_behind(
    log: RedisStreamLog,
) -> None:
    """An answer ended here (finish deletes the lease) and one some other writer had
    already marked finished (finish leaves the lease: release must delete it): neither
    leaves a lease, an active mark or a running-set entry."""
    for already_finished in (False, True):
        answer_id = uuid.uuid4().hex
        await log.create(answer_id, "s-lease", job=b"{}", owner="w1")
        _, meta, lease = log._keys(answer_id)
        if already_finished:
            await log.redis.hset(meta, "finished", "1")
        await log.finish(answer_id)
        await log.release(answer_id, "w1")
        assert await log.redis.exists(lease) == 0, f"already finished: {already_finished}"
        assert await log.active("s-lease") is None
        assert await log.redis.zscore(log._running, answer_id) is None


async def test_released_unfinished_answer_is_an_orphan(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    answer_id = await started(log)
    await log.release(answer_id, "w1")
    assert await other_log.orphans() == [answer_id]
    assert not log.holds(answer_id)


async def test_orphan_scan_finds_only_unleased_answers_and_drops_ended_ones(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    alive = await started(log, session="s1")
    orphan = await started(log, session="s2")
    await log.release(orphan, "w1")
    expired = await started(log, session="s3")
    await log.release(expired, "w1")
    await log.redis.delete(f"{log.settings.namespace}:answer:{{{expired}}}:meta")  # its TTL ran out
    assert await other_log.orphans() == [orphan]
    running = f"{log.settings.namespace}:running"
    assert await log.redis.zscore(running, expired) is None, "an expired answer leaves the set"
    assert await log.redis.zscore(running, alive) is not None


async def test_concurrent_takeover_has_one_winner(redis_url: str, redis_prefix: str) -> None:
    settings = RedisLogSettings(namespace=redis_prefix, lease_ttl=5.0)
    logs = [RedisStreamLog(connect(redis_url), settings) for _ in range(5)]
    try:
        answer_id = uuid.uuid4().hex
        await logs[0].create(answer_id, "s")
        wins = await asyncio.gather(*(lg.lease(answer_id, f"w{i}", 5) for i, lg in enumerate(logs)))
        assert sum(wins) == 1
    finally:
        for lg in logs:
            await lg.aclose()


async def test_nothing_acknowledged_is_lost_across_a_redis_crash(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    settings = RedisLogSettings(namespace="crash", lease_ttl=30, write_patience=0.3)
    log = RedisStreamLog(connect(server.url), settings)
    try:
        answer_id = await started(log)
        acknowledged = [await log.append(answer_id, "content", text(str(i))) for i in range(50)]
        server.kill()  # SIGKILL: only the AOF (fsync always) survives
        with pytest.raises(Exception, match=r"(?i)connect|closed|refused"):
            await log.append(answer_id, "content", text("while down"))
        server.start()
        piece = await eventually(lambda: _read_or_none(log, answer_id), within=10)
        assert [e.seq for e in piece.entries] == acknowledged
        assert await log.append(answer_id, "content", text("after")) == 51
    finally:
        await log.aclose()
        server.stop()


async def _read_or_none(log: RedisStreamLog, answer_id: str) -> Any:
    try:
        return await log.read(answer_id)
    except Exception:
        return None


async def test_writer_rides_out_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    log = RedisStreamLog(connect(server.url), RedisLogSettings(namespace="blip", lease_ttl=30))
    try:
        answer_id = await started(log)
        assert await log.append(answer_id, "content", text("before")) == 1
        server.kill()
        restart = threading.Timer(0.5, server.start)
        restart.start()
        began = time.monotonic()
        assert await log.append(answer_id, "content", text("during")) == 2
        assert time.monotonic() - began >= 0.4, "it waited for Redis to come back"
        restart.join()
        await log.finish(answer_id)
        piece = await log.read(answer_id)
        assert [e.seq for e in piece.entries] == [1, 2] and piece.finished
    finally:
        await log.aclose()
        server.stop()


async def test_a_cancelled_reader_always_stops(log: RedisStreamLog) -> None:
    """redis-py can swallow a cancellation landing in a command's last moments; an SSE
    reader whose client had gone then read on until the answer ended. Cancelled at
    random points of a live answer, every reader must stop."""
    answer_id = await started(log)
    done = asyncio.Event()

    async def writer() -> None:
        while not done.is_set():
            await log.append(answer_id, "content", text("x"))
            await asyncio.sleep(0.002)

    async def reader() -> None:
        after = 0
        while True:
            page = await log.read(answer_id, after, wait=15)
            after = page.entries[-1].seq if page.entries else after

    writing = asyncio.create_task(writer())
    rng = random.Random(3)
    try:
        for _ in range(40):
            reading = asyncio.create_task(reader())
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(reading), 2.0)
            assert reading.cancelled()
    finally:
        done.set()
        await writing


async def test_readers_where_the_answer_is_written_read_the_writers_copy(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """A reader on the instance that writes the answer gets what Redis acknowledged
    without a round trip of its own (the shared reader is never used), exactly what a
    reader on another instance gets from Redis."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    waiting = asyncio.create_task(log.read(answer_id, 0, wait=10))
    await log.append(answer_id, "content", text("a"))
    assert [e.seq for e in (await asyncio.wait_for(waiting, 5)).entries] == [1]
    for piece in ("b", "c"):
        await log.append(answer_id, "content", text(piece))
    await log.append(answer_id, "done", b"{}")
    last = asyncio.create_task(log.read(answer_id, 4, wait=10))
    await log.finish(answer_id)
    assert (await asyncio.wait_for(last, 5)).finished
    here, there = await log.read(answer_id, 1), await other_log.read(answer_id, 1)
    assert here == there and [e.seq for e in here.entries] == [2, 3, 4] and here.finished
    assert log.reader.connections == 0


async def test_a_reader_on_a_fenced_instance_goes_on_from_redis(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """The writing instance froze and another took its answer over: the reader that
    waited on the first instance's copy gets the new writer's events from Redis, in
    order, once (the copy stops serving the moment the old writer is fenced off)."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    await log.append(answer_id, "content", text("Hel"))
    log._renewers[answer_id].cancel()  # the instance freezes: its lease lapses
    await eventually(other_log.orphans)
    assert await other_log.lease(answer_id, "w2", 30.0)
    reader = asyncio.create_task(log.read(answer_id, 1, wait=10))
    assert await other_log.append(answer_id, "content", text("lo")) == 2
    with pytest.raises(LeaseLostError):  # the frozen instance wakes up: fenced off
        await log.append(answer_id, "content", text("zombie"))
    piece = await asyncio.wait_for(reader, 5)
    assert [(e.seq, e.data) for e in piece.entries] == [(2, text("lo"))]
    await other_log.finish(answer_id)
    assert (await log.read(answer_id, 2, wait=10)).finished


async def test_appends_of_many_answers_share_pipelines(log: RedisStreamLog) -> None:
    """Appends made in the same loop iteration go out together: 40 answers appending at
    once take a few pipelines, not 40 round trips, and each gets its own seq, in order."""
    answers = [uuid.uuid4().hex for _ in range(40)]
    for answer_id in answers:
        await log.create(answer_id, f"s-{answer_id}", owner="w1")
    before = log._appends.batches
    for round_ in (1, 2):
        seqs = await asyncio.gather(*(log.append(a, "content", text(f"{round_}")) for a in answers))
        assert seqs == [round_] * len(answers)
    assert log._appends.batches - before <= 4
    for answer_id in answers:
        piece = await log.read(answer_id)
        assert [(e.seq, e.data) for e in piece.entries] == [(1, text("1")), (2, text("2"))]


async def test_appends_go_on_after_redis_forgets_the_script(log: RedisStreamLog) -> None:
    """A restarted (or flushed) Redis has no scripts: the batch loads the append script
    again and the appends that met NOSCRIPT are sent once more, none lost or doubled."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    assert await log.append(answer_id, "content", text("a")) == 1
    await log.redis.script_flush()
    assert await log.append(answer_id, "content", text("b")) == 2
    assert [e.seq for e in (await other_entries(log, answer_id))] == [1, 2]


async def other_entries(log: RedisStreamLog, answer_id: str) -> list[Any]:
    piece, _ = await log._read_now(answer_id, 0)  # straight from Redis
    return piece.entries


@pytest.mark.parametrize("moment", ["queued", "sent"])
async def test_an_append_whose_caller_is_cancelled_still_lands_whole(
    log: RedisStreamLog, moment: str
) -> None:
    """A cancel that comes while an append waits, before its batch goes out or while it is
    in flight, is raised once the append ran: the event is in the log and in the writer's
    copy, so the text a cancelled answer saves is the text its log holds (a queued call
    was left out, and the answer saved text no reader of the log ever saw)."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    assert await log.append(answer_id, "content", text("a")) == 1
    sent = log._appends.batches
    if moment == "sent":  # Redis holds the batch's script until unpaused
        await log.redis.client_pause(10_000, all=False)
    appending = asyncio.ensure_future(log.append(answer_id, "content", text("b")))
    await asyncio.sleep(0)  # the call is queued; its batch is not sent yet
    if moment == "sent":
        await eventually(lambda: _batches_past(log, sent))
    appending.cancel()
    if moment == "sent":
        await log.redis.client_unpause()
    with pytest.raises(asyncio.CancelledError):
        await appending
    assert [e.data for e in await other_entries(log, answer_id)] == [text("a"), text("b")]
    assert [e.seq for e in (await log.read(answer_id)).entries] == [1, 2]  # the writer's copy
    assert await log.append(answer_id, "content", text("c")) == 3


async def _batches_past(log: RedisStreamLog, sent: int) -> bool:
    return log._appends.batches > sent


async def test_posts_land_in_order_without_the_writer_waiting(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """A post returns at once; a flush waits until every post landed; an append after
    them takes the next seq. Another instance reads them all, in order."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    sent = log._appends.batches
    for n in range(20):
        log.post(answer_id, "content", text(str(n)))
    assert log._appends.batches == sent  # nothing has gone out yet: the writer read on
    await log.flush(answer_id)
    assert await log.append(answer_id, "done", b"{}") == 21
    piece = await other_log.read(answer_id)
    assert [e.data for e in piece.entries] == [*(text(str(n)) for n in range(20)), b"{}"]


async def test_an_append_after_one_that_did_not_land_is_refused(log: RedisStreamLog) -> None:
    """The writer does not wait for its posts, so one queued behind a post that failed
    (its batch lost to a dropped connection, no patience left) would land after it: text
    with a gap. Each append names the one before it, and Redis refuses it unless that
    one is the log's last; the first after a takeover (`*`) follows whatever is there."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    log.post(answer_id, "content", text("a"))
    await log.flush(answer_id)
    keys, ms = log._keys(answer_id), log._lease_ms
    lost = ["w1", ms, "content", text("c"), "op-c", "op-b-that-never-landed"]
    assert await replied(log._appends, keys, lost) == -4
    after_takeover = ["w1", ms, "content", text("c"), "op-c", "*"]
    assert await replied(log._appends, keys, after_takeover) == 2
    assert [e.data for e in await other_entries(log, answer_id)] == [text("a"), text("c")]


async def test_a_failed_post_is_raised_by_the_next_post_and_by_flush(
    log: RedisStreamLog,
) -> None:
    """A post whose append Redis refused (here: another instance holds the lease now)
    fails the answer's next post and its flush with that error; nothing after it lands."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    log.post(answer_id, "content", text("a"))
    await log.flush(answer_id)
    await log.redis.set(log._keys(answer_id)[2], "w2", px=30_000)  # taken over meanwhile
    log.post(answer_id, "content", text("b"))
    with pytest.raises(LeaseLostError):
        await log.flush(answer_id)
    with pytest.raises(LeaseLostError):
        log.post(answer_id, "content", text("c"))
    with pytest.raises(LeaseLostError):  # and so does every later flush
        await log.flush(answer_id)
    assert [e.data for e in await other_entries(log, answer_id)] == [text("a")]


async def test_a_batch_sent_again_runs_each_append_of_an_answer_once(log: RedisStreamLog) -> None:
    """A batch whose reply was lost is sent again whole; with an answer's tokens posted
    together, it holds several appends of one answer, the first of which is no longer
    the log's last op: each is recognised by its chain and answers its own seq again."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    keys, ms = log._keys(answer_id), log._lease_ms
    steps = ((1, "a", ""), (2, "b", "chain.1"), (3, "c", "chain.2"))
    calls = [["w1", ms, "content", text(t), f"chain.{n}", prev] for n, t, prev in steps]
    first = await asyncio.gather(*(replied(log._appends, keys, call) for call in calls))
    again = await asyncio.gather(*(replied(log._appends, keys, call) for call in calls))
    assert first == again == [1, 2, 3]
    assert [e.data for e in await other_entries(log, answer_id)] == [text(t) for t in "abc"]


async def test_an_append_cancelled_twice_still_settles_its_answer(log: RedisStreamLog) -> None:
    """An append whose caller is cancelled, then cancelled again while it waits for the
    append to land, still lands and is counted: a flush (and so the answer's end) does
    not wait for it forever."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    sent = log._appends.batches
    await log.redis.client_pause(10_000, all=False)  # the append's batch waits in Redis
    try:
        appending = asyncio.ensure_future(log.append(answer_id, "content", text("a")))
        await eventually(lambda: _batches_past(log, sent))
        appending.cancel()
        await asyncio.sleep(0)  # it waits for the append to land now
        appending.cancel()
    finally:
        await log.redis.client_unpause()
    with pytest.raises(asyncio.CancelledError):
        await appending
    await asyncio.wait_for(log.flush(answer_id), 5)
    assert [e.data for e in await other_entries(log, answer_id)] == [text("a")]


async def test_a_release_waits_for_the_posts_on_their_way(log: RedisStreamLog) -> None:
    """A post still on its way when the answer's lease is released would land after the
    release and take the lease again (the append script re-takes a free lease): another
    instance's scan would skip the answer until that lease ran out."""
    warm = uuid.uuid4().hex  # the release script loaded: a release takes one round trip
    await log.create(warm, "s0", owner="w1")
    await log.release(warm, "w1")
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    assert await log.append(answer_id, "content", text("a")) == 1  # a batch just went out
    log.post(answer_id, "content", text("b"))  # its batch waits for the spacing
    await log.release(answer_id, "w1")
    assert not await log.redis.exists(log._keys(answer_id)[2])
    assert [e.data for e in await other_entries(log, answer_id)] == [text("a"), text("b")]


async def test_an_answer_leased_again_after_another_wrote_it_starts_a_new_chain(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """This instance lost the lease, another wrote to the answer and let it go, and this
    one takes it again: its appends follow what the log holds now, not its old chain."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    assert await log.append(answer_id, "content", text("a")) == 1
    log._renewers[answer_id].cancel()  # the instance freezes: its lease lapses
    await eventually(other_log.orphans)
    assert await other_log.lease(answer_id, "w2", 30.0)
    assert await other_log.append(answer_id, "content", text("b")) == 2
    await other_log.release(answer_id, "w2")
    assert await log.lease(answer_id, "w1", 30.0)
    assert await log.append(answer_id, "content", text("c")) == 3


async def test_posts_queued_behind_one_that_failed_are_dropped_unsent(
    log: RedisStreamLog,
) -> None:
    """Each post names the one before it, so once one failed the posts queued after it
    could only be refused: they are handed that failure, not sent (through an outage each
    further batch would wait out the writer's patience again, and the answer's end with
    it)."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    assert await log.append(answer_id, "content", text("a")) == 1
    await log.redis.set(log._keys(answer_id)[2], "w2", px=30_000)  # taken over meanwhile
    sent = log._appends.batches
    await log.redis.client_pause(10_000, all=False)  # the next batch waits in Redis
    try:
        log.post(answer_id, "content", text("b"))
        await eventually(lambda: _batches_past(log, sent))
        log.post(answer_id, "content", text("c"))  # queued while b's batch is out
    finally:
        await log.redis.client_unpause()
    with pytest.raises(LeaseLostError):
        await asyncio.wait_for(log.flush(answer_id), 5)
    assert log._appends.batches == sent + 1  # c never went out


async def test_a_release_cancelled_while_it_waits_for_posts_still_lets_the_answer_go(
    log: RedisStreamLog,
) -> None:
    """A release waits for the posts on their way; cancelled meanwhile (shutdown), the
    instance lets go of the answer all the same: no renewal keeps its lease alive, so
    another instance can take it over once it lapses."""
    answer_id = uuid.uuid4().hex
    await log.create(answer_id, "s1", owner="w1")
    sent = log._appends.batches
    await log.redis.client_pause(10_000, all=False)
    try:
        log.post(answer_id, "content", text("a"))
        await eventually(lambda: _batches_past(log, sent))
        releasing = asyncio.ensure_future(log.release(answer_id, "w1"))
        await eventually(lambda: _waits_for_posts(log, answer_id))
        releasing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await releasing
    finally:
        await log.redis.client_unpause()
    assert not log.holds(answer_id) and answer_id not in log._renewers


async def _waits_for_posts(log: RedisStreamLog, answer_id: str) -> bool:
    posts = log._posts.get(answer_id)
    return posts is not None and posts.drained is not None
