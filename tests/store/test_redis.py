"""Redis specifics: Cluster-safe keys, namespaces, TTL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from dskit.store import (
    RedisStore,
    SessionNotFoundError,
    SessionRecord,
    StoredMessage,
    StoreError,
)
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis


def test_both_keys_of_a_session_share_one_cluster_slot(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, namespace=redis_prefix)
    record = store.create(SessionRecord())
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.keys(f"{redis_prefix}:session:*")]
    assert len(keys) == 1  # no messages yet: only the header
    store.append(record.id, [StoredMessage({"role": "user", "content": "x"})], expected_version=0)
    keys = sorted(k.decode() for k in client.keys(f"{redis_prefix}:session:*"))
    assert keys == [
        f"{redis_prefix}:session:{{{record.id}}}:messages",
        f"{redis_prefix}:session:{{{record.id}}}:meta",
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    client.close()
    store.close()


def test_namespaces_are_isolated(redis_url: str, redis_prefix: str) -> None:
    a = RedisStore(redis_url, namespace=f"{redis_prefix}a")
    b = RedisStore(redis_url, namespace=f"{redis_prefix}b")
    record = a.create(SessionRecord())
    assert [i.id for i in a.list_sessions()] == [record.id]
    assert b.list_sessions() == []
    a.close()
    b.close()


def test_ttl_is_set_and_expired_sessions_leave_the_listing(
    redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore(redis_url, namespace=redis_prefix, ttl=60)
    record = store.create(SessionRecord())
    store.append(record.id, [StoredMessage({"role": "user", "content": "x"})], expected_version=0)
    client = redis.Redis.from_url(redis_url)
    for key in client.keys(f"{redis_prefix}:session:*"):
        assert 0 < client.ttl(key) <= 60
    client.delete(*client.keys(f"{redis_prefix}:session:*"))  # as if they had expired
    assert store.list_sessions() == []
    assert client.zcard(f"{redis_prefix}:sessions") == 0
    client.close()
    store.close()


@pytest.mark.parametrize("bad", [{"namespace": "a{b}"}, {"namespace": ""}, {"ttl": 0}])
def test_bad_configuration_is_a_clear_error(redis_url: str, bad: dict[str, object]) -> None:
    with pytest.raises(StoreError):
        RedisStore(redis_url, **bad)  # type: ignore[arg-type]


def test_async_access_works_from_successive_event_loops(redis_url: str, redis_prefix: str) -> None:
    """A CLI may call asyncio.run more than once with one store (closing it in each loop,
    as with any redis.asyncio client)."""
    store = RedisStore(redis_url, namespace=redis_prefix)

    async def run(step: int) -> int:
        try:
            if step == 0:
                return (await store.acreate(SessionRecord(id="loops"))).version
            message = StoredMessage({"role": "user", "content": "x"})
            return await store.aappend("loops", [message], expected_version=step - 1)
        finally:
            await store.aclose()

    assert [asyncio.run(run(step)) for step in range(3)] == [0, 1, 2]
    assert len(store.load("loops").messages) == 2
    store.close()


def test_the_async_client_packs_commands_in_c_as_redis_py_would(
    redis_url: str, redis_prefix: str
) -> None:
    """The asyncio pool's connections pack with hiredis (redis-py packs them in Python):
    the same bytes, and what hiredis does not take goes the Python way, its errors as
    redis-py's own."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    from dskit.store._redis import async_client

    client = async_client(redis_url)
    packed = client.connection_pool.connection_class(host="127.0.0.1")
    python = Connection()
    for args in [
        ("EVALSHA", "f" * 40, 2, "k1", "k2", b'{"text":" \xc3\xa9"}', 30000, 1.5, -2**70),
        ("SCRIPT LOAD", "return 1"), (b"SCRIPT LOAD", "return 1"),
        ("SET", "k", bytearray(b"raw")), ("GET", "caf\u00e9"),
    ]:  # fmt: skip
        assert b"".join(packed.pack_command(*args)) == b"".join(python.pack_command(*args))
    assert type(packed).__name__ == "CPackedConnection"
    with pytest.raises(DataError):
        packed.pack_command("SET", "k", True)

    async def round_trip() -> list[object]:
        key = f"{redis_prefix}:packed"
        try:
            await client.set(key, bytearray(b"v\xc3\xa9"))
            sha = await client.script_load("return ARGV[1]")
            return [await client.get(key), await client.evalsha(sha, 0, "caf\u00e9")]
        finally:
            await client.aclose()

    assert asyncio.run(round_trip()) == [b"v\xc3\xa9", "café".encode()]


def test_a_limited_listing_skips_expired_sessions_and_stops_at_the_limit(
    redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore(redis_url, namespace=redis_prefix)
    old, middle, new = (store.create(SessionRecord(updated=t)) for t in (1.0, 2.0, 3.0))
    client = redis.Redis.from_url(redis_url)
    client.delete(*store.keys.session(new.id))  # the newest expired behind the index's back
    assert [i.id for i in store.list_sessions(1)] == [middle.id]

    async def alist() -> list[str]:
        try:
            return [i.id for i in await store.alist_sessions(1)]
        finally:
            await store.aclose()

    assert asyncio.run(alist()) == [middle.id]
    index = f"{redis_prefix}:sessions"
    assert {k.decode() for k in client.zrange(index, 0, -1)} == {old.id, middle.id}
    assert [i.id for i in store.list_sessions()] == [middle.id, old.id]
    client.close()
    store.close()


def test_every_pooled_connection_survives_a_redis_restart(tmp_path: Path) -> None:
    """After a restart each pooled connection is stale; without retries every one of them
    failed one request (seen as 503s from the gateway after Redis came back)."""
    server = RedisServer(tmp_path)
    server.start()
    store = RedisStore(server.url, namespace="restart")

    async def restart_under_use(record_id: str) -> list[SessionRecord]:
        try:
            await asyncio.gather(*(store.aload(record_id) for _ in range(8)))  # 8 pooled
            server.kill()
            server.start()
            return await asyncio.gather(*(store.aload(record_id) for _ in range(8)))
        finally:
            await store.aclose()

    try:
        record = store.create(SessionRecord())
        store.load(record.id)  # the sync pool holds a connection too
        loaded = asyncio.run(restart_under_use(record.id))
        assert {r.id for r in loaded} == {record.id}
        assert store.load(record.id).id == record.id
    finally:
        store.close()
        server.stop()


def test_a_write_goes_on_after_redis_forgets_its_script_and_moves_the_session_up(
    redis_url: str, redis_prefix: str
) -> None:
    """A write is its script and the index's bump in one round trip: a restarted or
    flushed Redis has the script loaded again (sync and async alike), a written session
    comes first in the listing, and a write that fails does not index a deleted one."""
    store = RedisStore(redis_url, namespace=redis_prefix)
    old, new = store.create(SessionRecord(updated=1.0)), store.create(SessionRecord(updated=2.0))
    message = StoredMessage({"role": "user", "content": "x"})
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    assert store.append(old.id, [message], expected_version=0) == 1
    assert [i.id for i in store.list_sessions()] == [old.id, new.id]
    client.script_flush()

    async def written_async() -> int:
        try:
            return await store.aappend(new.id, [message], expected_version=0)
        finally:
            await store.aclose()

    assert asyncio.run(written_async()) == 1
    assert [i.id for i in store.list_sessions()] == [new.id, old.id]
    assert store.delete(old.id)
    with pytest.raises(SessionNotFoundError):
        store.append(old.id, [message], expected_version=1)
    assert client.zscore(store.keys.index, old.id) is None
    client.close()
    store.close()
