"""`SharedReader`: one instance's blocking reads of the answer logs, shared by its readers.

A reader of a running answer used to hold a pooled connection in `XREAD BLOCK` while it
waited: about a hundred waiting streams drained the pool and the next request failed as
if Redis were down. Now waiting costs no connection of its own:

    readers --wait(log, after)--> SharedReader --> shards (at most `max_readers`)
                                                   each: one dedicated connection, one
                                                   task, `XREAD BLOCK` over at most
                                                   `keys_per_read` logs at a time

A shard tracks, per watched log, the newest entry id it has seen (`seen`). A waiter
whose cursor is behind `seen` returns at once; the others wait on a future that the shard
resolves when an XREAD brings an entry past their cursor. Readers then read the entries
themselves with one short command on the shared pool, so resume stays exact (everything
after the cursor, in order, once): the shard only says *when*, never *what*.

A log added while a shard is blocked wakes it through the shard's own wake stream (one
XADD on the pool; the XREAD reads that stream from its last id, so no wake is lost).
A log nobody waits on lingers a moment (its reader usually comes back for the next
event at once) and is then dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger("dskit.gateway")
EntryId = tuple[int, int]
LINGER = 0.5  # seconds a log stays watched after its last waiter left
BLOCK = 5.0  # seconds one XREAD blocks at most
WAKE_TTL = 300  # seconds a shard's wake stream outlives its last wake
READ_COUNT = 16  # entries per log per XREAD: only the newest id matters


def parse_id(raw: Any) -> EntryId:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, sub = text.partition("-")
    return int(ms), int(sub or 0)


def format_id(entry: EntryId) -> str:
    return f"{entry[0]}-{entry[1]}"


@dataclass(slots=True)
class _Watch:
    seen: EntryId
    waiters: list[tuple[EntryId, asyncio.Future[bool]]] = field(default_factory=list)
    idle_since: float = 0.0

    def advance(self, entry: EntryId) -> None:
        """The log holds `entry`: resolve every waiter whose cursor is behind it."""
        self.seen = max(self.seen, entry)
        keep = []
        for after, future in self.waiters:
            if after < self.seen:
                if not future.done():
                    future.set_result(True)
            else:
                keep.append((after, future))
        self.waiters = keep
        if not keep:
            self.idle_since = time.monotonic()

    def release_all(self) -> None:
        for _, future in self.waiters:
            if not future.done():
                future.set_result(True)
        self.waiters = []
        self.idle_since = time.monotonic()


class _Shard:
    """One dedicated connection and the task that blocks on it for its logs."""

    def __init__(self, owner: SharedReader, index: int) -> None:
        self.owner = owner
        self.conn = owner.dedicated_client()
        self.watches: dict[str, _Watch] = {}
        self.wake_key = f"{owner.namespace}:reader:{owner.instance}:{index}"
        self.wake_id: EntryId = (0, 0)
        self.blocked = False  # an XREAD is in flight (a new log needs a wake)
        self.woken = False  # a wake was sent for the XREAD in flight
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            name = f"redis-reader-{self.wake_key}"
            self.task = asyncio.create_task(self._run(), name=name)

    async def watch(self, key: str, after: EntryId, future: asyncio.Future[bool]) -> None:
        """Wait on `key` from `after`; resolve `future` when the log passes it."""
        watch = self.watches.get(key)
        if watch is None:
            self.watches[key] = _Watch(after, [(after, future)])
            await self._wake()
            return
        watch.waiters.append((after, future))
        if after < watch.seen:
            watch.advance(watch.seen)
        elif after > watch.seen:
            watch.advance(after)  # entries up to `after` exist: waiters behind it go read

    def leave(self, key: str, future: asyncio.Future[bool]) -> None:
        watch = self.watches.get(key)
        if watch is None:
            return
        watch.waiters = [(a, f) for a, f in watch.waiters if f is not future]
        if not watch.waiters:
            watch.idle_since = time.monotonic()

    async def _wake(self) -> None:
        self.changed.set()
        if not self.blocked or self.woken:
            return
        self.woken = True
        try:
            async with self.owner.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": "1"}, maxlen=16, approximate=False)
                pipe.expire(self.wake_key, WAKE_TTL)
                await pipe.execute()
        except Exception as exc:  # the XREAD returns by itself at its block timeout
            self.woken = False
            logger.debug("reader wake failed: %s", exc)

    def _prune(self) -> None:
        now = time.monotonic()
        for key, watch in list(self.watches.items()):
            if not watch.waiters and now - watch.idle_since >= LINGER:
                del self.watches[key]
                self.owner.forget(key, self)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            self._prune()
            if not self.watches:
                self.changed.clear()
                await self.changed.wait()
                continue
            try:
                await self._read_once()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: waiters go read (and meet the error)
                logger.warning("shared Redis reader: %s", exc)
                for watch in self.watches.values():
                    watch.release_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _read_once(self) -> None:
        self.blocked, self.woken = True, False
        try:
            streams: dict[Any, Any] = {k: format_id(w.seen) for k, w in self.watches.items()}
            streams[self.wake_key] = format_id(self.wake_id)
            waiting = any(w.waiters for w in self.watches.values())
            block = BLOCK if waiting else LINGER
            reply = await self.conn.xread(streams, count=READ_COUNT, block=int(block * 1000))
        finally:
            self.blocked = False
        for key, entries in _streams(reply):
            if not entries:
                continue
            newest = parse_id(entries[-1][0])
            if key == self.wake_key:
                self.wake_id = max(self.wake_id, newest)
            elif (watch := self.watches.get(key)) is not None:
                watch.advance(newest)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        for watch in self.watches.values():
            watch.release_all()
        with contextlib.suppress(Exception):
            await self.owner.client.delete(self.wake_key)
        with contextlib.suppress(Exception):
            await self.conn.aclose()


def _streams(reply: Any) -> list[tuple[str, list[Any]]]:
    """XREAD's reply as (key, entries) pairs: a list in RESP2, a map in RESP3."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out = []
    for key, entries in pairs:
        name = key.decode() if isinstance(key, bytes) else str(key)
        out.append((name, list(entries)))
    return out


class SharedReader:
    """The waits of every reader of this instance, on at most `max_readers` connections.

    `client` is the shared pool (used for the short wake commands); each shard makes one
    dedicated connection with the same settings and no socket timeout under its block.
    """

    def __init__(
        self, client: redis.asyncio.Redis, namespace: str, *, keys_per_read: int = 256,
        max_readers: int = 8,
    ) -> None:  # fmt: skip
        if keys_per_read < 1 or max_readers < 1:
            raise ValueError("keys_per_read and max_readers must be >= 1")
        self.client = client
        self.namespace = namespace
        self.instance = uuid.uuid4().hex[:12]
        self.keys_per_read = keys_per_read
        self.max_readers = max_readers
        self._shards: list[_Shard] = []
        self._where: dict[str, _Shard] = {}

    def __repr__(self) -> str:
        return f"SharedReader(shards={len(self._shards)}, logs={len(self._where)})"

    @property
    def connections(self) -> int:
        """Dedicated connections in use (one per shard)."""
        return len(self._shards)

    def dedicated_client(self) -> redis.asyncio.Redis:
        from dskit.store._redis import dedicated_client

        return dedicated_client(self.client, socket_timeout=BLOCK + 10.0)

    def idle(self, key: str, after: int) -> bool:
        """Whether this reader already knows the log has nothing after `after` (so a
        reader may wait without reading first): it watches the log and saw just that."""
        shard = self._where.get(key)
        watch = shard.watches.get(key) if shard is not None else None
        return watch is not None and watch.seen == (after, 0)

    async def wait(self, key: str, after: int, seconds: float) -> bool:
        """Until the log at `key` holds an entry past `<after>-0` (True) or `seconds`
        passed (False). True may also mean "go read": the reader lost Redis."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        shard = self._shard_for(key)
        await shard.watch(key, (after, 0), future)
        try:
            async with asyncio.timeout(max(seconds, 0.001)):
                return await future
        except TimeoutError:
            return False
        finally:
            shard.leave(key, future)

    def _shard_for(self, key: str) -> _Shard:
        shard = self._where.get(key)
        if shard is None:
            shard = self._pick()
            self._where[key] = shard
        shard.start()
        return shard

    def _pick(self) -> _Shard:
        for shard in self._shards:
            if len(shard.watches) < self.keys_per_read:
                return shard
        if len(self._shards) < self.max_readers:
            self._shards.append(_Shard(self, len(self._shards)))
            return self._shards[-1]
        return min(self._shards, key=lambda s: len(s.watches))

    def forget(self, key: str, shard: _Shard) -> None:
        if self._where.get(key) is shard:
            del self._where[key]

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
        self._shards.clear()
        self._where.clear()
