"""Gateway keys and session ownership in Redis: every instance of a fleet agrees."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from click.testing import CliRunner

from dskit.cli import main
from dskit.gateway import KeyStore, RedisKeyStore
from dskit.gateway.backends._redis_keys import open_keys

pytestmark = pytest.mark.redis


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["keys", *args])


def test_the_keys_cli_works_against_redis(redis_url: str, redis_prefix: str) -> None:
    where = ["--redis", redis_url, "--redis-namespace", redis_prefix]
    created = _cli("create", "--principal", "carol", *where)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    listed = _cli("list", *where)
    assert "carol" in listed.output and "active" in listed.output and key not in listed.output
    dump = b"".join(
        v for k in redis.Redis.from_url(redis_url).scan_iter(f"{redis_prefix}:*")
        for v in redis.Redis.from_url(redis_url).hgetall(k).values()
    )  # fmt: skip
    assert key.encode() not in dump and key[6:].encode() not in dump, "only hashes stored"
    key_id = listed.output.split()[0]
    with RedisKeyStore(redis_url, redis_prefix) as keys:
        assert keys.principal_for(key) == "carol"
    assert _cli("revoke", key_id, *where).exit_code == 0
    assert "revoked" in _cli("list", *where).output
    again = _cli("revoke", key_id, *where)
    assert again.exit_code != 0 and "no active key" in again.output
    bad = _cli("create", "--principal", "a b", *where)
    assert bad.exit_code == 2 and "principal" in bad.output
    down = _cli("list", "--redis", "redis://127.0.0.1:1/0")
    assert down.exit_code == 1 and "cannot reach Redis" in down.output


def test_the_backend_is_chosen_once_by_redis(
    redis_url: str, redis_prefix: str, tmp_path: Any
) -> None:
    with open_keys(redis_url, redis_prefix, None) as shared:
        assert isinstance(shared, RedisKeyStore)
    local = open_keys(None, redis_prefix, str(tmp_path / "k.sqlite3"))
    assert isinstance(local, KeyStore)
    local.close()


def test_two_instances_share_keys_ownership_and_revocation(
    gateway_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    """A key created through one instance authenticates on the other; a session created
    through one is the same principal's on the other (and nobody else's); a revoke on one
    is refused by the other at its next request."""
    seed = _cli("create", "--principal", "bob", "--redis", redis_url,
                "--redis-namespace", redis_prefix)  # fmt: skip
    bob = seed.stdout.strip()
    one = gateway_factory(redis=redis_url, redis_namespace=redis_prefix)
    two = gateway_factory(redis=redis_url, redis_namespace=redis_prefix)
    alice, info = one.gw.keys.create("alice")
    with two.client(alice) as a2, one.client(alice) as a1, two.client(bob) as b2:
        assert a2.get("/v1/sessions").status_code == 200, "a key of one works on the other"
        sid = a1.post("/v1/sessions", json={}).json()["id"]
        assert a2.get(f"/v1/sessions/{sid}").status_code == 200
        assert sid in {s["id"] for s in a2.get("/v1/sessions").json()["data"]}
        assert b2.get(f"/v1/sessions/{sid}").status_code == 404, "only its principal's"
        assert sid not in {s["id"] for s in b2.get("/v1/sessions").json()["data"]}
        answer = a2.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).json()
        assert answer["status"] == "completed"
        assert two.gw.keys.revoke(info.key_id)
        assert a1.get("/v1/sessions").status_code == 401, "a revoke on one is seen by all"
        assert a2.get("/v1/sessions").status_code == 401
        assert b2.get("/v1/sessions").status_code == 200
        assert a1.delete(f"/v1/sessions/{sid}").status_code == 401
    with one.client(bob) as b1:
        assert b1.delete(f"/v1/sessions/{sid}").status_code == 404
