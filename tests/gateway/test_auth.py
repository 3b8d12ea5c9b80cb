"""Gateway keys (CLI, hashed storage), principals isolated, loopback-only without keys."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dskit.cli import main
from dskit.gateway import KeyStore
from tests.gateway.conftest import GatewayServer


def _create_key(keys_db: Path, principal: str) -> str:
    result = CliRunner().invoke(
        main, ["keys", "create", "--principal", principal, "--keys-db", str(keys_db)]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("sk-gw-") and len(key) > 40
    return key


def test_keys_cli_create_list_revoke_and_only_hashes_stored(tmp_path: Path) -> None:
    db = tmp_path / "gateway.sqlite3"
    key = _create_key(db, "alice")
    listed = CliRunner().invoke(main, ["keys", "list", "--keys-db", str(db)])
    assert "alice" in listed.output and "active" in listed.output and key not in listed.output
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert key not in dump and key[6:] not in dump
    key_id = listed.output.split()[0]
    revoked = CliRunner().invoke(main, ["keys", "revoke", key_id, "--keys-db", str(db)])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    again = CliRunner().invoke(main, ["keys", "revoke", key_id, "--keys-db", str(db)])
    assert again.exit_code != 0 and "no active key" in again.output
    bad = CliRunner().invoke(main, ["keys", "create", "--principal", "a b", "--keys-db", str(db)])
    assert bad.exit_code == 2 and "principal" in bad.output


def test_principals_are_isolated(gateway_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "gateway.sqlite3"
    alice, bob = _create_key(db, "alice"), _create_key(db, "bob")
    gateway: GatewayServer = gateway_factory(keys_path=str(db))
    with gateway.client(alice) as a, gateway.client(bob) as b, gateway.client() as anon:
        sid = a.post("/v1/sessions", json={}).json()["id"]
        answer = a.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).json()
        assert answer["status"] == "completed"
        for method, path in [
            ("GET", f"/v1/sessions/{sid}"),
            ("DELETE", f"/v1/sessions/{sid}"),
            ("POST", f"/v1/sessions/{sid}/cancel"),
            ("GET", f"/v1/sessions/{sid}/answers/{answer['answer_id']}/events"),
            ("GET", f"/v1/sessions/{sid}/answers/{answer['answer_id']}/stream"),
        ]:
            response = b.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
        posted = b.post(f"/v1/sessions/{sid}/messages", json={"content": "steal"})
        assert posted.status_code == 404
        assert b.get("/v1/sessions").json()["data"] == []
        assert [s["id"] for s in a.get("/v1/sessions").json()["data"]] == [sid]
        unauthenticated = anon.get("/v1/sessions")
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["type"] == "authentication_error"
    with gateway.client("sk-gw-not-a-real-key") as wrong:
        assert wrong.post("/v1/chat/completions", json={}).status_code == 401


def test_revoked_key_is_refused_and_login_cookie_works(
    gateway_factory: Any, tmp_path: Path
) -> None:
    db = tmp_path / "gateway.sqlite3"
    key = _create_key(db, "carol")
    gateway: GatewayServer = gateway_factory(keys_path=str(db))
    with gateway.client() as http:
        assert http.post("/v1/login", json={"key": "sk-gw-wrong"}).status_code == 401
        login = http.post("/v1/login", json={"key": key})
        assert login.status_code == 204
        assert "httponly" in login.headers["set-cookie"].lower()
        assert http.get("/v1/sessions").status_code == 200
    with KeyStore(db) as store:
        store.revoke(store.list_keys()[0].key_id)
    with pytest.raises(sqlite3.ProgrammingError):  # the with block closed it
        store.list_keys()
    with gateway.client(key) as http:
        assert http.get("/v1/sessions").status_code == 401


def test_without_keys_everything_is_one_local_principal(gateway: GatewayServer) -> None:
    with gateway.client("sk-whatever") as one, gateway.client() as two:
        sid = one.post("/v1/sessions", json={}).json()["id"]
        assert two.get(f"/v1/sessions/{sid}").status_code == 200


def test_serve_refuses_a_public_bind_without_keys(tmp_path: Path) -> None:
    db = tmp_path / "gateway.sqlite3"
    args = ["serve", "--host", "0.0.0.0", "--keys-db", str(db), "--store", "memory"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in result.output


def test_rate_limit_per_principal_answers_429_with_retry_after(gateway_factory: Any) -> None:
    from dskit.gateway import RateLimit

    gateway: GatewayServer = gateway_factory(rate_limit=RateLimit(rate=0.2, burst=2))
    with gateway.client() as http:
        statuses = [http.post("/v1/sessions", json={}).status_code for _ in range(3)]
        limited = http.post("/v1/chat/completions", json={})
    assert statuses == [201, 201, 429]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"


def test_the_answer_cache_is_per_principal(gateway_factory: Any, tmp_path: Path) -> None:
    """A temperature-0 answer is cached for the principal that asked, never shared: the
    same question from another key is a miss (and its own upstream call), then a hit."""
    db = tmp_path / "gateway.sqlite3"
    alice, bob = _create_key(db, "alice"), _create_key(db, "bob")
    gateway: GatewayServer = gateway_factory(keys_path=str(db))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    body = {"model": "deepseek-flash", "temperature": 0, "messages": question}
    with gateway.client(alice) as a, gateway.client(bob) as b:
        first = a.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.headers["X-Dskit-Cache"] == "miss"
        again = a.post("/v1/chat/completions", json=body)
        assert again.headers["X-Dskit-Cache"] == "hit" and again.json()["cached"] is True
        other = b.post("/v1/chat/completions", json=body)
        assert other.status_code == 200 and other.headers["X-Dskit-Cache"] == "miss"
        assert "cached" not in other.json()
        assert b.post("/v1/chat/completions", json=body).headers["X-Dskit-Cache"] == "hit"
        # the sessions surface: alice's session answer is not bob's either
        asked = {"content": "Name a river.", "background": False}
        done = []
        for http in (a, b):
            sid = http.post("/v1/sessions", json={"parameters": {"temperature": 0}}).json()["id"]
            result = http.post(f"/v1/sessions/{sid}/messages", json=asked).json()
            events = http.get(f"/v1/sessions/{sid}/answers/{result['answer_id']}/events").json()
            done.append(events["events"][-1]["data"])
        assert [d.get("cached", False) for d in done] == [False, False]


def test_listing_reads_the_callers_own_sessions(gateway_factory: Any, tmp_path: Path) -> None:
    """A principal with more sessions than the old scan window (1,000) does not empty
    anyone else's list: each lists its own, most recently updated first."""
    from dskit.store import SessionRecord

    db = tmp_path / "gateway.sqlite3"
    alice, bob = _create_key(db, "alice"), _create_key(db, "bob")
    gateway: GatewayServer = gateway_factory(keys_path=str(db))
    gw = gateway.gw
    with gateway.client(alice) as a, gateway.client(bob) as b:
        mine = b.post("/v1/sessions", json={"title": "bob's"}).json()["id"]
        many = []
        for n in range(1005):  # newer than bob's, straight into the gateway's stores
            record = gw.store.create(SessionRecord(title=f"alice {n}"))
            gw.keys.own(record.id, "alice")
            many.append(record.id)
        assert [s["id"] for s in b.get("/v1/sessions").json()["data"]] == [mine]
        listed = a.get("/v1/sessions", params={"limit": 500}).json()["data"]
        assert [s["id"] for s in listed] == many[::-1][:500]
        a.post(f"/v1/sessions/{many[0]}/messages", json={"content": "hi"})
        assert a.get("/v1/sessions", params={"limit": 1}).json()["data"][0]["id"] == many[0]
