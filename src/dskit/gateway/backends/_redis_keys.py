"""`RedisKeyStore`: gateway keys and session ownership in Redis, shared by a fleet.

The `KeyBackend` of `--redis`: a key created through any instance (or `dskit keys create
--redis URL`) authenticates on every other, a revoke is seen by all at their next check,
and a session is owned by its principal whichever instance created it.

    <ns>:keys               hash  key id -> JSON {hash, principal, created, revoked}
    <ns>:keyhash            hash  SHA-256 of an active key -> principal (one HGET per
                                  authentication; a revoke deletes the field)
    <ns>:owners             hash  session id -> principal
    <ns>:owned:{<principal>} set  the principal's session ids

Each change is one Lua script, so the hashes never disagree. The client is redis-py's
synchronous one: the protocol's calls are single short round trips (as SQLite's are
single indexed lookups), made from the routes as the SQLite ones are.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from dskit.gateway.backends._keys import (
    KeyBackend,
    KeyInfo,
    KeyStore,
    hash_key,
    new_key,
    well_formed,
)

if TYPE_CHECKING:
    import redis

# KEYS: keys, keyhash. ARGV: key id, digest, principal, info JSON. 1 created, 0 id taken.
CREATE_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[4]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS: keys, keyhash. ARGV: key id, now. 1 revoked, 0 no such active key.
REVOKE_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local info = cjson.decode(raw)
if info.revoked and info.revoked ~= cjson.null then return 0 end
info.revoked = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(info))
redis.call('HDEL', KEYS[2], info.hash)
return 1
"""

# KEYS: owners. ARGV: session id, principal, namespace. Moves it from a previous owner.
OWN_SCRIPT = """
local before = redis.call('HGET', KEYS[1], ARGV[1])
if before then redis.call('SREM', ARGV[3] .. ':owned:{' .. before .. '}', ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', ARGV[3] .. ':owned:{' .. ARGV[2] .. '}', ARGV[1])
return 1
"""

# KEYS: owners. ARGV: session id, namespace.
DISOWN_SCRIPT = """
local before = redis.call('HGET', KEYS[1], ARGV[1])
if not before then return 0 end
redis.call('SREM', ARGV[2] .. ':owned:{' .. before .. '}', ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisKeyStore:
    """Hashed keys and session ownership in Redis: the `KeyBackend` of a fleet."""

    def __init__(self, url: str, namespace: str) -> None:
        import redis

        from dskit.gateway.backends._redis_log import check_redis_url
        from dskit.store._redis import client_options

        check_redis_url(url)
        self.namespace = namespace
        self._client: redis.Redis = redis.Redis.from_url(url, **client_options(is_async=False))
        self._keys, self._hashes = f"{namespace}:keys", f"{namespace}:keyhash"
        self._owners = f"{namespace}:owners"
        self._scripts = {
            name: self._client.register_script(source)
            for name, source in (("create", CREATE_SCRIPT), ("revoke", REVOKE_SCRIPT),
                                 ("own", OWN_SCRIPT), ("disown", DISOWN_SCRIPT))
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"RedisKeyStore(namespace={self.namespace!r})"

    def __enter__(self) -> RedisKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _owned(self, principal: str) -> str:
        return f"{self.namespace}:owned:{{{principal}}}"

    def create(self, principal: str) -> tuple[str, KeyInfo]:
        key, digest, info = new_key(principal)
        data = orjson.dumps({"hash": digest, "principal": principal, "created": info.created})
        args: list[str | bytes | float] = [info.key_id, digest, principal, data]
        if not int(self._scripts["create"](keys=[self._keys, self._hashes], args=args)):
            return self.create(principal)  # a key id taken (12 hex digits): draw again
        return key, info

    def list_keys(self) -> list[KeyInfo]:
        infos = []
        for key_id, raw in self._client.hgetall(self._keys).items():
            data = orjson.loads(raw)
            infos.append(
                KeyInfo(_text(key_id), data["principal"], data["created"], data.get("revoked"))
            )
        return sorted(infos, key=lambda info: info.created)

    def revoke(self, key_id: str) -> bool:
        args: list[str | float] = [key_id, time.time()]
        return bool(int(self._scripts["revoke"](keys=[self._keys, self._hashes], args=args)))

    def has_keys(self) -> bool:
        return bool(self._client.hlen(self._keys))

    def principal_for(self, key: str) -> str | None:
        if not well_formed(key):
            return None
        value = self._client.hget(self._hashes, hash_key(key))
        return None if value is None else _text(value)

    def own(self, session_id: str, principal: str) -> None:
        self._scripts["own"](keys=[self._owners], args=[session_id, principal, self.namespace])

    def owner(self, session_id: str) -> str | None:
        value = self._client.hget(self._owners, session_id)
        return None if value is None else _text(value)

    def sessions_of(self, principal: str) -> set[str]:
        return {_text(member) for member in self._client.smembers(self._owned(principal))}

    def disown(self, session_id: str) -> None:
        self._scripts["disown"](keys=[self._owners], args=[session_id, self.namespace])

    def close(self) -> None:
        self._client.close()


def open_keys(redis_url: str | None, namespace: str, keys_path: str | None) -> KeyBackend:
    """The key backend, chosen once: Redis' when the gateway runs with `--redis`, else
    the SQLite file (at `keys_path`, default beside the session store)."""
    if redis_url:
        return RedisKeyStore(redis_url, namespace)
    return KeyStore(keys_path)
