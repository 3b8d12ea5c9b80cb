"""`RedisStreamLog`: the stream log in Redis Streams, shared by every gateway instance.

Keys of one answer carry its id as a hash tag, so they sit in one Redis Cluster slot and
each write is one Lua script (appends: one script per batch of them, `_redis_batch.py`):

    <ns>:answer:{<id>}:log     a stream; entry ids are `<seq>-0`, so XREAD from
                               `<after>-0` is exactly "everything after event <after>"
    <ns>:answer:{<id>}:meta    a hash: session, seq, finished, created, job
    <ns>:answer:{<id>}:lease   who may write: `SET NX PX`, renewed and released with
                               compare-and-set / compare-and-delete scripts

`finish()` adds a marker entry `<seq>-1` (kind `__end`): it does not use a sequence number,
but wakes every blocked XREAD, so a reader never waits out its timeout on a finished
answer. Two more keys live in their own slots: `<ns>:active:{<session>}` (the running
answer of a session) and `<ns>:running` (a sorted set of unfinished answers: where the
takeover looks for answers whose lease expired, because their instance died).

Readers that wait for news do not block a connection each: the instance's
`SharedReader` (`_redis_reader.py`) blocks for all of them on a few connections of its
own and tells each when its log moved on. Readers of an answer this instance generates
need not reach Redis at all: they read the writer's copy of what Redis acknowledged
(`LocalTails`, `_redis_tail.py`).

Appends are fenced: the script only writes while the lease is this instance's (or free,
which it re-takes). So an instance that lost its lease (paused, partitioned) cannot
interleave text with the instance that took the answer over.

A generation posts its tokens (`post`) rather than waiting for each one to land: they
go out in the instance's next batch while it reads on. Each append names the one before
it, so none lands after one that failed; the next post raises that failure, and a
`flush` waits for every post (the session store never gets text the log has not).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from dskit.gateway.backends._log import (
    AnswerInfo,
    LogEntry,
    LogSlice,
    PartialAnswer,
    UnknownAnswerError,
)
from dskit.gateway.backends._redis_batch import ScriptBatcher
from dskit.gateway.backends._redis_reader import SharedReader
from dskit.gateway.backends._redis_tail import LocalTails

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger("dskit.gateway")
END = "__end"
DEFAULT_NAMESPACE = "dskit:gw"
DEFAULT_LEASE = 10.0  # seconds a writer's lease lasts unless renewed
T = TypeVar("T")

# Appends to any number of answers, in order: per answer three KEYS (log, meta, lease)
# and six ARGV (worker, lease ms, kind, data, op id, the op id of the append before it).
# Returns one reply per answer: the new seq, -1 (no such answer), -2 (lease held by
# another), -3 (finished), -4 (the append before it did not land).
# Op ids are `<chain>.<n>`: a writer's chain of appends to one answer, numbered from 1.
# A retried batch (its reply lost to a dropped connection) may hold appends that landed:
# one of the last landed op's chain numbered at or before it is a no-op that returns its
# seq (each op of a chain lands right after the one before it). The one before it chains
# an answer's appends, so none lands after one that failed (a gap in the text): the
# writer does not wait for each one (`post`). `*`: not chained (the first append after
# a takeover, or after a failure: whatever the log holds).
# Four commands an append (the meta read once, written once): Redis' share of a token.
# The first append gives the log the meta's expiry: an answer nobody finishes goes whole.
# Each answer's keys share its hash tag, but one batch spans answers: a single Redis,
# not a Cluster (as for the shared reader; docs/scaling.md).
APPEND_SCRIPT = """
local function landed(op, last, seq)
  if not last then return nil end
  local chain, n = string.match(op, '^(.+)%.(%d+)$')
  local last_chain, last_n = string.match(last, '^(.+)%.(%d+)$')
  if chain == nil or chain ~= last_chain or tonumber(n) > tonumber(last_n) then return nil end
  return seq - (tonumber(last_n) - tonumber(n))
end
local function append(log, meta, lease, worker, ms, kind, data, op, prev)
  local state = redis.call('HMGET', meta, 'seq', 'lastop', 'finished')
  if not state[1] then return -1 end
  local again = landed(op, state[2], tonumber(state[1]))
  if again then return again end
  if state[3] == '1' then return -3 end
  local holder = redis.call('GET', lease)
  if holder and holder ~= worker then return -2 end
  if prev ~= '*' and (state[2] or '') ~= prev then return -4 end
  if not holder then redis.call('SET', lease, worker, 'PX', ms) end
  local seq = tonumber(state[1]) + 1
  redis.call('XADD', log, seq .. '-0', 'k', kind, 'd', data)
  redis.call('HSET', meta, 'seq', seq, 'lastop', op)
  if seq == 1 then
    local ttl = redis.call('PTTL', meta)
    if ttl > 0 then redis.call('PEXPIRE', log, ttl) end
  end
  return seq
end
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = 3 * i, 6 * i
  out[i + 1] = append(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a + 1], ARGV[a + 2],
                      ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
end
return out
"""

# KEYS: log, meta, lease, the session's active mark, the running set. ARGV: the session
# id, the time, the job, the unfinished answer's ttl (s), the owner ('': none), the lease
# (ms), the answer id. A new answer in one step: its meta, its lease, the active mark and
# the running set.
CREATE_SCRIPT = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'session', ARGV[1], 'seq', 0, 'finished', 0, 'created', ARGV[2],
           'job', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6]) end
redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[7])
return 1
"""

# KEYS: log, meta, lease, the session's active mark, the running set. ARGV: ttl seconds
# for the finished answer, the answer id. The active mark goes with the end marker: whoever
# sees the end may post the next question at once and must not get a 409.
FINISH_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
redis.call('ZREM', KEYS[5], ARGV[2])
if redis.call('HGET', KEYS[2], 'finished') == '1' then return 0 end
redis.call('HSET', KEYS[2], 'finished', '1')
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
redis.call('XADD', KEYS[1], seq .. '-1', 'k', '__end', 'd', '')
redis.call('DEL', KEYS[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: log, meta. ARGV: after (exclusive), count.
# Returns {exists, entries, finished, seq}: the meta's flag and last seq, for a cursor
# past the end (the end marker `<seq>-1` is not after it).
READ_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, {}, 0, 0} end
local state = redis.call('HMGET', KEYS[2], 'finished', 'seq')
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
return {1, entries, state[1] == '1' and 1 or 0, tonumber(state[2] or '0')}
"""

# KEYS: log, meta. Returns {exists, the newest two entries}: the end marker and the last
# event, when finished.
LAST_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, {}} end
return {1, redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 2)}
"""

# KEYS: lease, meta. ARGV: worker, ms. Renew our own lease (1) or take a free one (2:
# another writer may have written meanwhile, so this one starts a new chain of appends).
LEASE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
if redis.call('HGET', KEYS[2], 'finished') == '1' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

# KEYS: lease. ARGV: worker, ms. Renew ours; re-take it if it lapsed and nobody took it.
RENEW_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

COMPARE_DELETE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLostError(RuntimeError):
    """Another instance holds this answer's lease: this one must stop writing to it."""


class AppendLostError(RuntimeError):
    """An earlier append of this answer did not land: this one would leave a gap."""


@dataclass(slots=True)
class _Posts:
    """An answer's appends on their way: the chain's last op id ("": none yet, "*": not
    known, after a takeover), how many have not landed, the first failure, and the
    future that flushes wait on."""

    keys: tuple[str, str, str]  # the answer's log, meta and lease
    chain: str  # this writer's chain of appends to the answer: its op ids' prefix
    prev: str = ""
    count: int = 0  # appends made in the chain
    pending: int = 0
    failure: BaseException | None = None
    drained: asyncio.Future[None] | None = None

    def failed(self) -> BaseException | None:
        return self.failure

    def landed(self, failure: BaseException | None) -> BaseException | None:
        """One append's outcome (None: it landed); the failure as the answer keeps it."""
        self.pending -= 1
        if isinstance(failure, asyncio.CancelledError):  # its batch never went out
            failure = LeaseLostError("the log closed before an append of the answer went out")
        if failure is not None and self.failure is None:
            self.failure = failure
        if self.pending == 0 and self.drained is not None:
            if not self.drained.done():
                self.drained.set_result(None)
            self.drained = None
        return failure

    async def settled(self) -> None:
        """Until nothing posted is on its way (a cancelled wait leaves it be)."""
        if self.pending:
            if self.drained is None:
                self.drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.drained)


@dataclass(frozen=True, slots=True)
class RedisLogSettings:
    """Where the log lives and how long things last.

    lease_ttl: how long a dead instance's answers wait before another takes them over
    (renewed every third of it while the instance lives). It wins over the caller's ttl:
    takeover speed is a deployment choice, not a per-call one.
    answer_ttl: how long a finished answer stays readable for resume.
    unfinished_ttl: a safety net, so an answer nobody finishes is dropped eventually.
    write_patience: how long the writer's calls (append, finish, release) retry through a
    Redis outage before giving up; readers never wait: they fail at once (a clear 503).
    """

    namespace: str = DEFAULT_NAMESPACE
    lease_ttl: float = DEFAULT_LEASE
    answer_ttl: float = 900.0
    unfinished_ttl: float = 86_400.0
    read_batch: int = 1000
    write_patience: float = 15.0

    def __post_init__(self) -> None:
        if not self.namespace or any(c in self.namespace for c in "{} "):
            raise ValueError(f"invalid Redis namespace {self.namespace!r}")
        if self.lease_ttl < 0.05 or self.answer_ttl < 1 or self.unfinished_ttl < 1:
            raise ValueError("lease_ttl must be >= 0.05 s and the answer TTLs >= 1 s")


def check_redis_url(url: str) -> None:
    """A ConfigError for a URL that is not Redis' (redis://, rediss:// or unix://)."""
    from dskit.client._errors import ConfigError

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"invalid Redis URL {url!r}: expected redis://, rediss:// or unix://")


def connect(url: str) -> redis.asyncio.Redis:
    """An asyncio Redis client with bounded connect time (a down Redis fails fast) whose
    pool queues commands when every connection is in use (`async_client`)."""
    from dskit.client._errors import ConfigError

    try:
        import redis.asyncio  # noqa: F401  (the extra is installed)
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("Redis support needs redis-py: pip install 'dskit[redis]'") from None
    check_redis_url(url)
    from dskit.store._redis import async_client

    return async_client(url)


def stop_if_cancelled(task: asyncio.Task[Any] | None = None) -> None:
    """Raise CancelledError if this task was asked to stop. redis-py can swallow a
    cancellation that lands in a command's last moments (redis/redis-py#2028 and kin):
    an SSE reader whose client had gone then read on until the answer ended, and a
    cancelled generation went on. Readers call this after each command, a generation
    after each append; the log's write calls do not, as a cancelled generation still
    logs its end on purpose. `task`: the current task, for a caller that asks often
    (on Python 3.11 each lookup of it is a getpid() system call)."""
    task = task or asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(entry_id: Any, fields: Any) -> LogEntry | None:
    """A stream entry as a log entry; None for the end marker (`<seq>-1`, kind `__end`)."""
    seq, sub = _text(entry_id).split("-")
    kind = _text(fields[1])
    if kind == END or sub != "0":
        return None
    return LogEntry(int(seq), kind, bytes(fields[3]))


_NOT_IN_IDS = re.compile(r"[{} ]")  # an id sits inside a key's hash tag


def _check_id(value: str, what: str) -> str:
    if not value or _NOT_IN_IDS.search(value):
        raise UnknownAnswerError(f"invalid {what} {value!r}")
    return value


class RedisStreamLog:
    """The `StreamLog` of a fleet: any instance reads, resumes or takes over any answer."""

    def __init__(self, client: redis.asyncio.Redis, settings: RedisLogSettings | None = None):
        self.redis = client
        self.settings = settings or RedisLogSettings()
        self._ns = self.settings.namespace
        self.reader = SharedReader(client, self._ns)
        self.tails = LocalTails()  # the answers this instance writes, for its own readers
        # every generation's appends, each loop iteration's in one script run, on a
        # connection of their own (one batch is in flight at a time)
        from dskit.store._redis import dedicated_client

        self._appends = ScriptBatcher(dedicated_client(client), APPEND_SCRIPT, 3, self._patiently)
        self._held: dict[str, str] = {}
        self._posts: dict[str, _Posts] = {}  # the appends of each answer held here
        self._sessions: dict[str, str] = {}  # the session of each answer created here
        self._ended: set[str] = set()  # finished here, not yet released
        # the chains of appends (op ids `<chain>.<n>`: a retried batch runs once): this
        # log's own prefix and a count, not a uuid4 each (a getrandom() system call)
        prefix = uuid.uuid4().hex
        self._chains = (f"{prefix}-{n:x}" for n in itertools.count())
        self._renewers: dict[str, asyncio.Task[None]] = {}
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("create", CREATE_SCRIPT), ("finish", FINISH_SCRIPT), ("read", READ_SCRIPT),
                ("last", LAST_SCRIPT), ("lease", LEASE_SCRIPT), ("renew", RENEW_SCRIPT),
                ("cad", COMPARE_DELETE_SCRIPT),
            )
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"RedisStreamLog(namespace={self._ns!r})"

    # ---- keys ------------------------------------------------------------------------

    def _keys(self, answer_id: str) -> tuple[str, str, str]:
        base = f"{self._ns}:answer:{{{_check_id(answer_id, 'answer id')}}}"
        return f"{base}:log", f"{base}:meta", f"{base}:lease"

    def _active_key(self, session_id: str) -> str:
        return f"{self._ns}:active:{{{_check_id(session_id, 'session id')}}}"

    @property
    def _running(self) -> str:
        return f"{self._ns}:running"

    @property
    def _lease_ms(self) -> int:
        return max(50, int(self.settings.lease_ttl * 1000))

    # ---- the StreamLog protocol --------------------------------------------------------

    async def create(
        self, answer_id: str, session_id: str, owner: str | None = None, job: bytes = b""
    ) -> None:
        """A new answer; `job` is what a takeover needs to continue it (opaque bytes).

        With `owner` the answer is born leased to it, in the same script: an answer
        in the running set without a lease is an orphan to every other instance's scan,
        so leasing it in a second step would let another instance take it over first.
        """
        log, meta, lease = self._keys(answer_id)
        keys = [log, meta, lease, self._active_key(session_id), self._running]
        args: list[Any] = [
            session_id, time.time(), job, int(self.settings.unfinished_ttl), owner or "",
            self._lease_ms, answer_id,
        ]  # fmt: skip
        await self._scripts["create"](keys=keys, args=args)  # one round trip
        self._sessions[answer_id] = session_id
        if owner is not None:
            self._hold(answer_id, owner, _Posts((log, meta, lease), next(self._chains)))
            self.tails.open(answer_id)

    async def append(self, answer_id: str, kind: str, data: bytes) -> int:
        """Append and wait for the event's seq. It goes out once the answer's posts have
        landed; after one failed, it goes all the same, after what the log holds (an
        answer whose text broke off still logs its end). A caller cancelled meanwhile
        is cancelled once it has landed (the log holds every event its generation took:
        the text a cancelled answer saves); it lands whoever waits."""
        posts = self._posts.get(answer_id)
        if posts is not None:
            await posts.settled()
        seq: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._send(answer_id, kind, data, rechain=True, seq=seq)
        try:
            return await asyncio.shield(seq)
        except asyncio.CancelledError:
            await asyncio.wait([seq])
            raise

    def post(self, answer_id: str, kind: str, data: bytes) -> None:
        """Append without waiting: the generation reads on while its events go out in
        the instance's next batch (a writer waiting for each of them cost a wake-up, a
        shield and a future per token). They land in order, chained (APPEND_SCRIPT)."""
        self._send(answer_id, kind, data)

    def _send(
        self, answer_id: str, kind: str, data: bytes, *, rechain: bool = False,
        seq: asyncio.Future[int] | None = None,
    ) -> None:  # fmt: skip
        posts, args = self._chained(answer_id, kind, data, rechain=rechain)
        posts.pending += 1
        landed = functools.partial(self._landed, answer_id, kind, data, posts, seq)
        # once one of the chain failed, the posts queued after it could only be refused
        # (each names the one before it): they are dropped with that failure, not sent
        # (through an outage, each batch would wait out the writer's patience again)
        self._appends.post(posts.keys, args, landed, None if rechain else posts.failed)

    def _landed(
        self, answer_id: str, kind: str, data: bytes, posts: _Posts,
        seq: asyncio.Future[int] | None, reply: Any, exc: BaseException | None,
    ) -> None:  # fmt: skip
        """An append's outcome, noted once whoever waits: the writer's copy, the answer's
        chain, and the waiting caller's `seq` (None: a post)."""
        appended = 0
        if exc is None:
            try:
                appended = self._appended(answer_id, kind, data, int(reply), posts)
            except Exception as failed:  # lease lost, finished, unknown, after a failure
                exc = failed
        exc = posts.landed(exc)
        if seq is None or seq.done():
            return
        if exc is None:
            seq.set_result(appended)
        else:
            seq.set_exception(exc)

    async def flush(self, answer_id: str) -> None:
        posts = self._posts.get(answer_id)
        if posts is None:  # never held here, or forgotten (its lease lost): nothing landed
            raise LeaseLostError(f"this instance holds no lease on answer {answer_id}")
        await posts.settled()
        if posts.failure is not None:
            raise posts.failure

    def _chained(
        self, answer_id: str, kind: str, data: bytes, *, rechain: bool = False
    ) -> tuple[_Posts, list[Any]]:
        """The next append's arguments, chained to the one before it; after a failure, a
        post is refused, and an append (`rechain`) follows whatever the log holds."""
        worker = self._held.get(answer_id)
        posts = self._posts.get(answer_id)
        if worker is None or posts is None:
            self.tails.close(answer_id)
            raise LeaseLostError(f"this instance holds no lease on answer {answer_id}")
        if posts.failure is not None:
            if not rechain:
                raise posts.failure
            # a new chain after what the log holds: an op of the old one run late (a stale
            # batch) is then no replay of this chain
            posts.chain, posts.count, posts.prev = next(self._chains), 0, "*"
        posts.count += 1
        op = f"{posts.chain}.{posts.count}"
        args: list[Any] = [worker, self._lease_ms, kind, data, op, posts.prev]
        posts.prev = op
        return posts, args

    def _appended(self, answer_id: str, kind: str, data: bytes, seq: int, posts: _Posts) -> int:
        if seq == -1:
            raise UnknownAnswerError(answer_id)
        if seq == -2:
            self._forget(answer_id)
            raise LeaseLostError(f"answer {answer_id} is being written by another instance")
        if seq == -3:
            self.tails.close(answer_id)
            raise LeaseLostError(f"answer {answer_id} is already finished")
        if seq == -4:  # an append before it failed: that one's error is the answer's
            raise posts.failure or AppendLostError(f"an append to answer {answer_id} was lost")
        self.tails.add(answer_id, seq, kind, data)
        return seq

    async def read(self, answer_id: str, after: int = 0, wait: float = 0.0) -> LogSlice:
        """Entries after `after`; with `wait`, waits for news through the instance's
        shared reader (no connection of its own), then reads them on the pool. A cursor
        past the log's end waits from the log's last entry, so the answer's end (its
        marker is not after the cursor) still ends the wait."""
        after = max(int(after), 0)
        local = await self.tails.read(answer_id, after, wait)
        if local is not None:  # written here: what Redis acknowledged, no round trip
            return local
        log = self._keys(answer_id)[0]
        deadline = time.monotonic() + wait
        since = after
        if wait <= 0 or not self.reader.idle(log, after):
            piece, last = await self._read_through_load(answer_id, after)
            if piece.entries or piece.finished or wait <= 0:
                return piece
            since = min(after, last)
        while True:
            await self.reader.wait(log, since, deadline - time.monotonic())
            stop_if_cancelled()
            piece, last = await self._read_through_load(answer_id, after)
            if piece.entries or piece.finished or time.monotonic() >= deadline:
                return piece
            since = min(after, last)  # the log grew, not yet past the cursor: wait on

    async def _read_through_load(self, answer_id: str, after: int) -> tuple[LogSlice, int]:
        """`_read_now`, retried while Redis is only busy (a pool wait that ran out): a
        reader may wait longer, and must not be cut off as if Redis were down. An
        unreachable Redis still fails at once."""
        from dskit.store._redis import is_busy

        deadline = time.monotonic() + self.settings.write_patience
        while True:
            try:
                return await self._read_now(answer_id, after)
            except Exception as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _read_now(self, answer_id: str, after: int) -> tuple[LogSlice, int]:
        """The entries after `after`, and the log's last seq."""
        keys = self._keys(answer_id)[:2]
        args = [after, self.settings.read_batch]
        exists, raw, ended, last = await self._scripts["read"](keys=keys, args=args)
        stop_if_cancelled()
        if not int(exists):
            raise UnknownAnswerError(answer_id)
        entries = [_entry(entry_id, fields) for entry_id, fields in raw]
        # the end marker comes last; a cursor at or past it reads nothing of a finished log
        finished = entries[-1] is None if entries else int(ended) == 1
        return LogSlice([e for e in entries if e is not None], finished), int(last)

    async def last(self, answer_id: str) -> LogEntry | None:
        """The latest event (a finished answer's `done` or `error`): one XREVRANGE."""
        exists, raw = await self._scripts["last"](keys=self._keys(answer_id)[:2])
        if not int(exists):
            raise UnknownAnswerError(answer_id)
        entries = (_entry(entry_id, fields) for entry_id, fields in raw)
        return next((e for e in entries if e is not None), None)

    async def finish(self, answer_id: str) -> None:
        """End the answer. The session's active mark goes first: whoever sees the end
        marker may post the next question at once and must not get a 409."""
        log, meta, lease = self._keys(answer_id)
        await self._posts_settled(answer_id)  # its end marker comes after every post
        session = self._sessions.pop(answer_id, None)  # known for the answers made here
        if session is None:
            found = await self._patiently(lambda: self.redis.hget(meta, "session"))
            if found is None:
                raise UnknownAnswerError(answer_id)
            session = _text(found)
        keys = [log, meta, lease, self._active_key(session), self._running]
        args: list[str | int] = [int(self.settings.answer_ttl), answer_id]
        script = self._scripts["finish"]
        done = int(await self._patiently(lambda: script(keys=keys, args=args)))
        if done == -1:
            self._forget(answer_id)
            raise UnknownAnswerError(answer_id)
        self.tails.finish(answer_id)  # the end marker is in the log (now or already)
        self._forget(answer_id)
        if done == 1:  # ended by this call, which deleted the lease: `release` need not
            self._ended.add(answer_id)

    async def info(self, answer_id: str) -> AnswerInfo | None:
        try:
            meta = self._keys(answer_id)[1]
        except UnknownAnswerError:
            return None
        values = await self.redis.hmget(meta, ["session", "finished"])
        if values[0] is None:
            return None
        return AnswerInfo(answer_id, _text(values[0]), _text(values[1] or b"0") == "1")

    async def active(self, session_id: str) -> str | None:
        try:
            value = await self.redis.get(self._active_key(session_id))
        except UnknownAnswerError:
            return None
        return None if value is None else _text(value)

    async def lease(self, answer_id: str, worker: str, ttl: float) -> bool:
        """Take (or renew) the right to write this answer; renewed in the background."""
        log, meta, lease = self._keys(answer_id)
        taken = int(await self._scripts["lease"](keys=[lease, meta], args=[worker, self._lease_ms]))
        if taken == -1:
            raise UnknownAnswerError(answer_id)
        if taken not in (1, 2):
            return False
        posts = self._posts.get(answer_id)
        if posts is None or taken == 2:  # taken afresh: a new chain, after what the log holds
            posts = _Posts((log, meta, lease), next(self._chains), prev="*")
        self._hold(answer_id, worker, posts)
        return True

    def _hold(self, answer_id: str, worker: str, posts: _Posts) -> None:
        """Note the lease as ours and keep it renewed in the background."""
        self._held[answer_id] = worker
        self._posts[answer_id] = posts
        if answer_id not in self._renewers:
            task = asyncio.create_task(self._renew(answer_id, worker), name=f"lease-{answer_id}")
            self._renewers[answer_id] = task

    async def release(self, answer_id: str, worker: str) -> None:
        try:  # a post landing after the release would take the lease again
            await self._posts_settled(answer_id)
        finally:  # cancelled meanwhile: forgotten all the same (no renewal keeps it alive)
            self._forget(answer_id)
        if answer_id in self._ended:  # `finish` deleted the lease
            self._ended.discard(answer_id)
            return
        with contextlib.suppress(UnknownAnswerError):
            lease = self._keys(answer_id)[2]
            await self._patiently(lambda: self._scripts["cad"](keys=[lease], args=[worker]))

    async def _posts_settled(self, answer_id: str) -> None:
        """Until the answer's posts on their way have landed or failed, at most the
        writer's patience (each is retried that long, and those behind a failed one are
        dropped, so this bound only matters if that breaks)."""
        posts = self._posts.get(answer_id)
        if posts is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(posts.settled(), self.settings.write_patience)

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a writer's call through a Redis outage (restart, failover), up to the
        configured patience; safe because every write here is idempotent."""
        from redis.exceptions import ConnectionError, TimeoutError

        deadline = time.monotonic() + self.settings.write_patience
        delay = 0.05
        while True:
            try:
                return await call()
            except (ConnectionError, TimeoutError):
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # ---- leases and takeover ----------------------------------------------------------

    @property
    def lease_ttl(self) -> float:
        return self.settings.lease_ttl

    def holds(self, answer_id: str) -> bool:
        """True while this instance holds the lease (as far as its last renewal knows)."""
        return answer_id in self._held

    async def _renew(self, answer_id: str, worker: str) -> None:
        lease = self._keys(answer_id)[2]
        interval = self.settings.lease_ttl / 3
        try:
            while self._held.get(answer_id) == worker:
                await asyncio.sleep(interval)
                try:
                    kept = await self._scripts["renew"](keys=[lease], args=[worker, self._lease_ms])
                except Exception as exc:  # Redis down: keep trying while the lease may live
                    logger.warning("lease renewal of %s failed: %s", answer_id, exc)
                    continue
                if not int(kept) and self._held.get(answer_id) == worker:
                    logger.warning("lease of answer %s lost to another instance", answer_id)
                    self._held.pop(answer_id, None)
                    self.tails.close(answer_id)  # its readers go to Redis
        finally:
            self._renewers.pop(answer_id, None)

    def _forget(self, answer_id: str) -> None:
        self._held.pop(answer_id, None)
        self._posts.pop(answer_id, None)  # posts on their way still land (or fail)
        self._sessions.pop(answer_id, None)  # `finish` reads it back from Redis if need be
        self.tails.close(answer_id)  # unless finished: another instance may go on with it
        task = self._renewers.pop(answer_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def orphans(self, limit: int = 100) -> list[str]:
        """Unfinished answers nobody holds a lease on (their instance died): takeover work.

        One pipeline reads the state of every candidate; answers that finished or expired
        leave the running set in the same pass.
        """
        window = max(limit * 4, 100)
        candidates = [_text(raw) for raw in await self.redis.zrange(self._running, 0, window - 1)]
        if not candidates:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for answer_id in candidates:
                _, meta, lease = self._keys(answer_id)
                pipe.hget(meta, "finished")
                pipe.exists(lease)
            states = await pipe.execute()
        gone, found = [], []
        for answer_id, finished, leased in zip(candidates, states[::2], states[1::2], strict=True):
            if finished is None or _text(finished) == "1":
                gone.append(answer_id)
            elif not leased and answer_id not in self._held:
                found.append(answer_id)
        if gone:
            await self.redis.zrem(self._running, *gone)
        return found[:limit]

    async def job(self, answer_id: str) -> bytes:
        """The opaque job bytes given to `create` (b"" when there were none)."""
        value = await self.redis.hget(self._keys(answer_id)[1], "job")
        if value is None:
            raise UnknownAnswerError(answer_id)
        return value if isinstance(value, bytes) else value.encode()

    async def partial(self, answer_id: str) -> PartialAnswer:
        """The text logged so far (content and reasoning), to continue it after a takeover."""
        content: list[str] = []
        reasoning: list[str] = []
        seq, tools, finished, last, pieces = 0, False, False, None, 0
        while True:
            piece, _ = await self._read_now(answer_id, seq)
            for entry in piece.entries:
                seq, last = entry.seq, entry.kind
                if entry.kind in ("content", "reasoning"):
                    text = orjson.loads(entry.data)["text"]
                    (content if entry.kind == "content" else reasoning).append(text)
                    pieces += 1
                tools = tools or entry.kind == "tool_call"
            finished = finished or piece.finished
            if len(piece.entries) < self.settings.read_batch:
                break
        return PartialAnswer(
            seq, "".join(content), "".join(reasoning), tools, finished, last, pieces
        )

    async def aclose(self) -> None:
        for answer_id in list(self._renewers):
            self._forget(answer_id)
        self.tails.clear()
        await self.reader.aclose()
        await self._appends.client.aclose()
        await self.redis.aclose()
