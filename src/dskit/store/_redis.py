"""The shared store: Redis through redis-py (sync) and redis.asyncio (async).

Keys are namespaced and carry the session id as a hash tag, `<ns>:session:{<id>}:meta`
and `...:messages`, so both keys of a session sit in one Redis Cluster slot and every
write can be one Lua script: the version check and the change happen atomically. The
listing index (`<ns>:sessions`, a sorted set by update time) lives in another slot, so it
is updated after the write and pruned lazily: it may briefly name a deleted session, never
hide a live one. An optional TTL expires idle sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import Callable, Collection, Coroutine, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import orjson

from dskit._models import DEFAULT_MODEL
from dskit.store._base import DEFAULT_LIMIT, ExportMixin, check_limit
from dskit.store._model import (
    SessionConflictError,
    SessionInfo,
    SessionNotFoundError,
    SessionRecord,
    StoreBusyError,
    StoredMessage,
    StoreError,
    StoreUnavailableError,
    matches,
    redact_url,
    title_from,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

P = ParamSpec("P")
T = TypeVar("T")
RETRIES = 2  # a command's retries on a connection error, each on a fresh connection
POOL_SIZE = 128  # connections of one process' async pool: commands wait for a free one
POOL_WAIT = 30.0  # seconds a command waits for a pooled connection before "busy"


def client_options(*, is_async: bool) -> dict[str, Any]:
    """What every dskit Redis client is made with. `from_url` clients retry nothing by
    default, so after a Redis restart each stale pooled connection failed one request; a
    couple of quick retries reconnect instead, and a Redis that refuses connections fails
    within tens of milliseconds."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    backoff = ExponentialBackoff(cap=0.05, base=0.01)  # 20 ms, then 40 ms
    retry = AsyncRetry(backoff, RETRIES) if is_async else Retry(backoff, RETRIES)
    return {"retry": retry, "socket_connect_timeout": 2.0, "health_check_interval": 30}


def async_client(url: str, *, max_connections: int = POOL_SIZE) -> redis.asyncio.Redis:
    """An asyncio client whose pool *waits* for a free connection (up to `POOL_WAIT`).

    redis-py's default pool raises "Too many connections" the moment its 100 connections
    are in use: under load every extra command failed as if Redis were down. A blocking
    pool queues them instead; only a wait past `POOL_WAIT` fails, and `is_busy` tells it
    apart from an outage."""
    import redis.asyncio

    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT, **client_options(is_async=True)
    )
    pool.connection_class = packing_in_c(pool.connection_class)  # before any connection
    client = redis.asyncio.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # its pool is its own: `aclose` closes it
    return client


def dedicated_client(
    client: redis.asyncio.Redis, *, socket_timeout: float | None = None
) -> redis.asyncio.Redis:
    """A client with one connection of its own, made as `client`'s are (its retries, its
    packing), for a caller that keeps one command in flight at a time: no wait for the
    shared pool and no timeout on taking a connection from it."""
    import redis.asyncio

    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    if socket_timeout is not None:
        kwargs["socket_timeout"] = socket_timeout
    single = redis.asyncio.ConnectionPool(
        connection_class=pool.connection_class, max_connections=1, **kwargs
    )
    dedicated = redis.asyncio.Redis(connection_pool=single)
    dedicated.auto_close_connection_pool = True
    return dedicated


def packing_in_c(cls: type[Any]) -> type[Any]:
    """The asyncio connection class `cls`, packing its commands with hiredis (where it is
    installed: the `redis` extra has it). redis-py's sync connections pack with hiredis,
    its asyncio ones in Python, joining a growing buffer once per argument: a batch of
    64 log appends took 290 us to pack, 37 us in C. An argument hiredis does not take
    (a bytearray; a bool or None, which redis-py refuses) goes the Python way."""
    try:
        from hiredis import pack_command
    except ImportError:
        return cls

    def pack(self: Any, *args: Any) -> list[bytes]:
        if isinstance(args[0], str | bytes):  # "SCRIPT LOAD": its words apart, as
            args = (*args[0].split(), *args[1:])  # redis-py does
        try:
            return [pack_command(args)]
        except TypeError:
            return cls.pack_command(self, *args)  # type: ignore[no-any-return]

    return type(f"CPacked{cls.__name__}", (cls,), {"pack_command": pack})


def is_busy(exc: BaseException) -> bool:
    """Whether a Redis error means "up but loaded" (a pool wait or a reply that came late),
    not "unreachable" (refused, reset, no route: an outage)."""
    from redis.exceptions import ConnectionError, MaxConnectionsError, TimeoutError

    if isinstance(exc, StoreBusyError | MaxConnectionsError):
        return True
    if isinstance(exc, TimeoutError):
        return "connecting" not in str(exc)  # a connect timeout is an unreachable host
    return isinstance(exc, ConnectionError) and str(exc) == "No connection available."


# KEYS: meta, messages. ARGV: op, expected version, now, ttl, title, then op arguments.
# Returns the new version, or -1 (no such session), -2 (stale version), -3 (bad index).
WRITE_SCRIPT = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return {-1, 0} end
if tonumber(v) ~= tonumber(ARGV[2]) then return {-2, tonumber(v)} end
local op = ARGV[1]
if op == 'append' then
  for i = 6, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
  if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'title') == '' then
    redis.call('HSET', KEYS[1], 'title', ARGV[5])
  end
elseif op == 'replace' then
  local index = tonumber(ARGV[6])
  if index < 0 or index >= redis.call('LLEN', KEYS[2]) then return {-3, tonumber(v)} end
  redis.call('LSET', KEYS[2], index, ARGV[7])
elseif op == 'update' then
  for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
elseif op == 'truncate' then
  local length = tonumber(ARGV[6])
  if length <= 0 then redis.call('DEL', KEYS[2])
  else redis.call('LTRIM', KEYS[2], 0, length - 1) end
end
local new = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'updated', ARGV[3])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
end
return {new, 0}
"""

WRITE_SHA = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()

# KEYS: meta, messages. ARGV: ttl, then the header fields as pairs, '--', the messages.
CREATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local i = 2
while ARGV[i] ~= '--' do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i + 1, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[j]) end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
end
return 1
"""


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _newest(ids: Sequence[str], scores: Sequence[float | None]) -> list[str]:
    """The indexed ones of `ids`, by their index score (update time), newest first."""
    scored = [(score, i) for i, score in zip(ids, scores, strict=True) if score is not None]
    return [i for _, i in sorted(scored, reverse=True)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Keys:
    """Key names and the encoding both shells share."""

    def __init__(self, namespace: str, ttl: int | None) -> None:
        if not namespace or any(c in namespace for c in "{} "):
            raise StoreError(f"invalid Redis namespace {namespace!r}")
        if ttl is not None and (not isinstance(ttl, int) or ttl < 1):
            raise StoreError(f"ttl must be a positive number of seconds, got {ttl!r}")
        self.namespace = namespace
        self.ttl = ttl or 0
        self.index = f"{namespace}:sessions"

    def session(self, session_id: str) -> list[str]:
        if not session_id or any(c in session_id for c in "{}"):
            raise SessionNotFoundError(session_id)
        base = f"{self.namespace}:session:{{{session_id}}}"
        return [f"{base}:meta", f"{base}:messages"]

    def create_args(self, record: SessionRecord) -> list[Any]:
        head = record.header()
        head["title"] = record.title or title_from(record.messages)
        head["params"] = _dumps(record.params)
        head["system"] = _dumps(record.system)
        pairs = [str(x) for item in head.items() for x in item]
        return [self.ttl, *pairs, "--", *(_dumps(m.to_dict()) for m in record.messages)]

    def write_args(
        self, op: str, expected: int, messages: Sequence[StoredMessage], *extra: Any
    ) -> list[Any]:
        title = title_from(list(messages)) if op == "append" else ""
        encoded = [_dumps(m.to_dict()) for m in messages]
        return [op, expected, time.time(), self.ttl, title, *extra, *encoded]

    def update_args(self, expected: int, changes: dict[str, Any]) -> list[Any]:
        """An `update` write: the changed header fields as pairs, encoded like `create`."""
        encoded = {k: _dumps(v) if k in ("system", "params") else v for k, v in changes.items()}
        pairs = [x for item in encoded.items() for x in item]
        return ["update", expected, time.time(), self.ttl, "", *pairs]

    def record(self, session_id: str, head: dict[Any, Any], items: list[Any]) -> SessionRecord:
        if not head:
            raise SessionNotFoundError(session_id)
        h = {_text(k): _text(v) for k, v in head.items()}
        return SessionRecord(
            id=h["id"], title=h.get("title", ""), model=h.get("model", DEFAULT_MODEL),
            system=orjson.loads(h.get("system", "null")),
            params=orjson.loads(h.get("params", "{}")),
            created=float(h.get("created", 0)), updated=float(h.get("updated", 0)),
            version=int(h.get("version", 0)),
            messages=[StoredMessage.from_dict(orjson.loads(item)) for item in items],
        )  # fmt: skip

    @staticmethod
    def outcome(session_id: str, expected: int, reply: list[Any], args: list[Any]) -> int:
        code, actual = int(reply[0]), int(reply[1])
        if code == -1:
            raise SessionNotFoundError(session_id)
        if code == -2:
            raise SessionConflictError(session_id, expected, actual)
        if code == -3:
            raise StoreError(f"no message at index {args[5]} in session {session_id!r}")
        return code


# ---- reads, sans-I/O ------------------------------------------------------------------
# A read is a generator of steps: it yields a pipeline (redis-py's sync and asyncio ones
# queue commands alike) and is sent that pipeline's replies; `_run` and `_arun` are the
# only places that execute one.

Pipeline = Any  # redis.client.Pipeline or redis.asyncio.client.Pipeline
Pipelines = Callable[..., Pipeline]  # `client.pipeline`: `transaction=` says MULTI/EXEC
Steps = Generator[Pipeline, Any, T]  # sent each pipeline's replies


def _loading(keys: _Keys, pipelines: Pipelines, session_id: str) -> Steps[SessionRecord]:
    """One session: its header and messages read in one MULTI/EXEC."""
    meta, messages = keys.session(session_id)
    pipe = pipelines(transaction=True)
    pipe.hgetall(meta)
    pipe.lrange(messages, 0, -1)
    head, items = yield pipe
    return keys.record(session_id, head, items)


def _writing(
    keys: _Keys, pipelines: Pipelines, session_id: str, expected: int, args: list[Any]
) -> Steps[int]:
    """A write: its script and the index's bump in one round trip (`XX`: a session no
    longer indexed, deleted or expired, is not put back; nor is one whose `create` failed
    between its script and its ZADD, which an unconditional bump used to heal); the new
    version. A Redis that has forgotten the script (restarted, flushed) has it loaded,
    and the write goes once more."""
    from redis.exceptions import NoScriptError

    def write() -> Pipeline:
        pipe = pipelines(transaction=False)
        pipe.evalsha(WRITE_SHA, len(session), *session, *args)
        pipe.zadd(keys.index, {session_id: time.time()}, xx=True)
        return pipe

    session = keys.session(session_id)
    try:
        reply, _ = yield write()
    except NoScriptError:
        yield pipelines(transaction=False).script_load(WRITE_SCRIPT)
        reply, _ = yield write()
    return keys.outcome(session_id, expected, reply, args)


def _listing(
    keys: _Keys, pipelines: Pipelines, limit: int | None, only: Collection[str] | None
) -> Steps[list[SessionRecord]]:
    """The newest `limit` live sessions (all when None; of `only`, when given); drops
    index entries of expired ones. Stops loading once it has enough: a listing reads what
    it shows."""
    ids = yield from _indexed(keys, pipelines, only)
    records: list[SessionRecord] = []
    for raw in ids:
        if limit is not None and len(records) >= limit:
            break
        try:
            records.append((yield from _loading(keys, pipelines, _text(raw))))
        except SessionNotFoundError:
            yield pipelines(transaction=False).zrem(keys.index, raw)
    return records


def _indexed(keys: _Keys, pipelines: Pipelines, only: Collection[str] | None) -> Steps[list[Any]]:
    """The ids of the index, newest first (of `only`, when given: the indexed ones)."""
    if only is None:
        [ids] = yield pipelines(transaction=False).zrevrange(keys.index, 0, -1)
        return list(ids)
    chosen = list(only)
    if not chosen:
        return []
    [scores] = yield pipelines(transaction=False).zmscore(keys.index, chosen)
    return _newest(chosen, scores)


class _Read(Generic[T]):
    """Steps (a read, or `_writing`), driven: `next(replies)` gives the next pipeline to
    execute, or None once the steps are done and `result` set."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self.result: T

    def next(self, replies: list[Any] | None) -> Pipeline | None:
        """The next pipeline, given the last one's replies; a command's error is thrown
        into the steps (which may handle it, as `_writing` does NOSCRIPT)."""
        from redis.exceptions import ResponseError

        failed = next((r for r in replies or () if isinstance(r, ResponseError)), None)
        try:
            if failed is not None:
                return self._steps.throw(failed)
            return self._steps.send(replies)
        except StopIteration as done:
            self.result = done.value
            return None


def _run(steps: Steps[T]) -> T:
    """Steps through the sync client."""
    read, replies = _Read(steps), None
    while (pipe := read.next(replies)) is not None:
        replies = pipe.execute(raise_on_error=False)
    return read.result


async def _arun(steps: Steps[T]) -> T:
    """Steps through the asyncio client."""
    read, replies = _Read(steps), None
    while (pipe := read.next(replies)) is not None:
        replies = await pipe.execute(raise_on_error=False)
    return read.result


def _unreachable(store: RedisStore, exc: Exception) -> StoreError:
    where = redact_url(store._url)
    if is_busy(exc):
        return StoreBusyError(f"the session store {where} is busy: {exc}")
    return StoreUnavailableError(f"cannot reach the session store {where}: {exc}")


@contextlib.contextmanager
def _translated(store: RedisStore) -> Iterator[None]:
    """Redis' connection and timeout errors inside as one StoreUnavailableError (or
    StoreBusyError): what both `_reachable` and `_areachable` do."""
    try:
        yield
    except Exception as exc:
        if not _cannot_reach(exc):
            raise
        raise _unreachable(store, exc) from None


def _reachable(
    method: Callable[Concatenate[RedisStore, P], T],
) -> Callable[Concatenate[RedisStore, P], T]:
    @functools.wraps(method)
    def call(store: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with _translated(store):
            return method(store, *args, **kwargs)

    return call


def _areachable(
    method: Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def call(store: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with _translated(store):
            return await method(store, *args, **kwargs)

    return call


def _cannot_reach(exc: Exception) -> bool:
    from redis.exceptions import ConnectionError, TimeoutError

    return isinstance(exc, ConnectionError | TimeoutError | OSError)


class RedisStore(ExportMixin):
    """Sessions in Redis (a server or a cluster), shared by every process that uses it."""

    def __init__(
        self, url: str = "redis://localhost:6379/0", *, namespace: str = "dskit",
        ttl: int | None = None,
    ) -> None:  # fmt: skip
        try:
            import redis
            import redis.asyncio
        except ImportError:  # pragma: no cover - depends on the install
            raise StoreError("RedisStore needs redis-py: pip install 'dskit[redis]'") from None
        self.keys = _Keys(namespace, ttl)
        self._url = url
        self._sync: redis.Redis = redis.Redis.from_url(url, **client_options(is_async=False))
        self._async: redis.asyncio.Redis | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._create_sync = self._sync.register_script(CREATE_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisStore(namespace={self.keys.namespace!r})"

    # ---- sync -----------------------------------------------------------------------

    @_reachable
    def create(self, record: SessionRecord) -> SessionRecord:
        keys = self.keys.session(record.id)
        if not self._create_sync(keys=keys, args=self.keys.create_args(record)):
            raise SessionConflictError(record.id, record.version, None)
        self._sync.zadd(self.keys.index, {record.id: record.updated})
        return self.load(record.id)

    @_reachable
    def load(self, session_id: str) -> SessionRecord:
        return _run(_loading(self.keys, self._sync.pipeline, session_id))

    @_reachable
    def _write(self, session_id: str, expected: int, args: list[Any]) -> int:
        return _run(_writing(self.keys, self._sync.pipeline, session_id, expected, args))

    def append(
        self, session_id: str, messages: Sequence[StoredMessage], *, expected_version: int
    ) -> int:
        args = self.keys.write_args("append", expected_version, messages)
        return self._write(session_id, expected_version, args)

    def replace(
        self, session_id: str, index: int, message: StoredMessage, *, expected_version: int
    ) -> int:
        args = self.keys.write_args("replace", expected_version, [message], index)
        return self._write(session_id, expected_version, args)

    def truncate(self, session_id: str, length: int, *, expected_version: int) -> int:
        args = self.keys.write_args("truncate", expected_version, [], length)
        return self._write(session_id, expected_version, args)

    def _update(self, session_id: str, changes: dict[str, Any], expected_version: int) -> int:
        args = self.keys.update_args(expected_version, changes)
        return self._write(session_id, expected_version, args)

    @_reachable
    def _records(
        self, limit: int | None = None, only: Collection[str] | None = None
    ) -> list[SessionRecord]:
        return _run(_listing(self.keys, self._sync.pipeline, limit, only))

    def list_sessions(
        self, limit: int = DEFAULT_LIMIT, ids: Collection[str] | None = None
    ) -> list[SessionInfo]:
        return [r.info() for r in self._records(check_limit(limit), ids)]

    def search(self, text: str, limit: int = DEFAULT_LIMIT) -> list[SessionInfo]:
        """A scan of every session: fine for thousands; index elsewhere for millions."""
        check_limit(limit)
        return [r.info() for r in self._records() if matches(r, text)][:limit]

    @_reachable
    def delete(self, session_id: str) -> bool:
        removed = int(self._sync.delete(*self.keys.session(session_id)))
        self._sync.zrem(self.keys.index, session_id)
        return removed > 0

    def close(self) -> None:
        self._sync.close()

    # ---- async ----------------------------------------------------------------------

    def _aclient(self) -> redis.asyncio.Redis:
        """The async client of the running loop: a redis.asyncio client is bound to the
        loop that made it, and a CLI may run several loops one after another."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = async_client(self._url)
            self._async_loop = loop
        return self._async

    @_areachable
    async def acreate(self, record: SessionRecord) -> SessionRecord:
        client = self._aclient()
        script = client.register_script(CREATE_SCRIPT)
        if not await script(keys=self.keys.session(record.id), args=self.keys.create_args(record)):
            raise SessionConflictError(record.id, record.version, None)
        await client.zadd(self.keys.index, {record.id: record.updated})
        return await self.aload(record.id)

    @_areachable
    async def aload(self, session_id: str) -> SessionRecord:
        return await _arun(_loading(self.keys, self._aclient().pipeline, session_id))

    @_areachable
    async def _awrite(self, session_id: str, expected: int, args: list[Any]) -> int:
        pipelines = self._aclient().pipeline
        return await _arun(_writing(self.keys, pipelines, session_id, expected, args))

    async def aappend(
        self, session_id: str, messages: Sequence[StoredMessage], *, expected_version: int
    ) -> int:
        args = self.keys.write_args("append", expected_version, messages)
        return await self._awrite(session_id, expected_version, args)

    async def areplace(
        self, session_id: str, index: int, message: StoredMessage, *, expected_version: int
    ) -> int:
        args = self.keys.write_args("replace", expected_version, [message], index)
        return await self._awrite(session_id, expected_version, args)

    async def atruncate(self, session_id: str, length: int, *, expected_version: int) -> int:
        args = self.keys.write_args("truncate", expected_version, [], length)
        return await self._awrite(session_id, expected_version, args)

    async def _aupdate(
        self, session_id: str, changes: dict[str, Any], expected_version: int
    ) -> int:
        args = self.keys.update_args(expected_version, changes)
        return await self._awrite(session_id, expected_version, args)

    @_areachable
    async def _arecords(
        self, limit: int | None = None, only: Collection[str] | None = None
    ) -> list[SessionRecord]:
        return await _arun(_listing(self.keys, self._aclient().pipeline, limit, only))

    async def alist_sessions(
        self, limit: int = DEFAULT_LIMIT, ids: Collection[str] | None = None
    ) -> list[SessionInfo]:
        return [r.info() for r in await self._arecords(check_limit(limit), ids)]

    async def asearch(self, text: str, limit: int = DEFAULT_LIMIT) -> list[SessionInfo]:
        check_limit(limit)
        return [r.info() for r in await self._arecords() if matches(r, text)][:limit]

    @_areachable
    async def adelete(self, session_id: str) -> bool:
        client = self._aclient()
        removed = int(await client.delete(*self.keys.session(session_id)))
        await client.zrem(self.keys.index, session_id)
        return removed > 0

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
