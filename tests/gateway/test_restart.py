"""A single gateway keeps an answer as it grows: SIGKILLed mid-answer and restarted on the
same store, the partial answer is there marked incomplete, its stream and long poll end
cleanly, and the conversation goes on."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from dskit.gateway import GatewaySettings
from dskit.store import SQLiteStore, StoredMessage
from tests.conftest import GatewayProcess, wait_until
from tests.gateway.conftest import GatewayServer, parse_sse

SEED = 20260117
PACED = {"X-Sim-Token-Ms": "15"}  # slow enough to be killed mid-answer
ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Tell me a long story about rivers"


@pytest.fixture
def serve(sim: Any, tmp_path: Path) -> Iterator[GatewayProcess]:
    """One `dskit serve` on a fixed SQLite store, restartable on it."""
    args = ["--upstream", sim.base_url, "--store", str(tmp_path / "sessions.sqlite3"),
            "--keys-db", str(tmp_path / "keys.sqlite3")]  # fmt: skip
    env = {"DSKIT_HOME": str(tmp_path), "DSKIT_GATEWAY_FORWARD_SIM_HEADERS": "true"}
    process = GatewayProcess("serve", args, env, tmp_path)
    yield process
    process.stop()


def _events(response: httpx2.Response) -> Iterator[dict[str, Any]]:
    """Data events of a streamed SSE response as they arrive: id, event, parsed data."""
    block: list[str] = []
    for line in response.iter_lines():
        if line:
            block.append(line)
            continue
        for event in parse_sse("\n".join(block) + "\n\n") if block else []:
            if "data" in event:
                yield {**event, "data": orjson.loads(event["data"])}
        block = []


def _text(events: Sequence[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == "content")


def _seq(event_id: str) -> int:
    return int(event_id.rpartition(":")[2])


def _kill_mid_answer(serve: GatewayProcess, n: int) -> tuple[str, str, str, list[dict[str, Any]]]:
    """A streamed answer, the gateway SIGKILLed after the client saw `n` content events."""
    with httpx2.Client(base_url=serve.url, timeout=30) as http:
        created = http.post("/v1/sessions", json={"parameters": {"thinking": False}})
        sid = created.json()["id"]
        body = {"content": QUESTION, "stream": True}
        seen: list[dict[str, Any]] = []
        with http.stream(
            "POST", f"/v1/sessions/{sid}/messages", json=body, headers=PACED
        ) as response:
            aid = response.headers["x-answer-id"]
            for event in _events(response):
                assert event["event"] not in ("done", "error"), "the answer ended too soon"
                seen.append(event)
                if sum(e["event"] == "content" for e in seen) >= n:
                    serve.kill()
                    break
    return sid, aid, seen[-1]["id"], seen


def _stored(tmp: Path, sid: str) -> list[StoredMessage]:
    store = SQLiteStore(tmp / "sessions.sqlite3")
    try:
        return store.load(sid).messages
    finally:
        store.close()


def _check_restarted(
    http: httpx2.Client, tmp: Path, sid: str, aid: str, last: str, seen: list[Any]
) -> None:
    stored = _stored(tmp, sid)
    assert [m.role for m in stored] == ["user", "assistant"]
    partial = stored[1]
    saved, client = partial.content, _text(seen)
    assert partial.incomplete and saved, stored
    assert saved.startswith(client) or client.startswith(saved), (saved, client)

    # the stream after Last-Event-ID: what was saved that the client had not seen, then
    # a terminal event; the stream ends by itself
    raw = http.get(f"/v1/sessions/{sid}/answers/{aid}/stream", headers={"Last-Event-ID": last}).text
    rest = [{**e, "data": orjson.loads(e["data"])} for e in parse_sse(raw) if "data" in e]
    assert rest and rest[-1]["event"] == "error", rest
    assert rest[-1]["data"]["type"] == "interrupted"
    assert all(_seq(e["id"]) > _seq(last) for e in rest)
    assert client + _text(rest) == max(saved, client, key=len)

    # from the start: exactly what was saved
    raw = http.get(f"/v1/sessions/{sid}/answers/{aid}/stream").text
    whole = [{**e, "data": orjson.loads(e["data"])} for e in parse_sse(raw) if "data" in e]
    assert _text(whole) == saved and whole[-1]["event"] == "error"

    # the long poll answers at once, finished, with a terminal event
    started = time.monotonic()
    page = http.get(
        f"/v1/sessions/{sid}/answers/{aid}/events", params={"after": _seq(last), "wait": 20}
    ).json()
    assert time.monotonic() - started < 10
    assert page["finished"] and page["events"][-1]["type"] == "error", page
    assert page["events"][-1]["data"]["saved"]["content"] == saved

    result = http.get(f"/v1/sessions/{sid}/answers/{aid}").json()
    assert result["status"] == "failed" and result["error"]["type"] == "interrupted"
    assert result["message"]["content"] == saved and result["message"]["incomplete"]

    detail = http.get(f"/v1/sessions/{sid}").json()
    assert detail["active_answer"] is None
    assert detail["messages"][1]["answer_id"] == aid and detail["messages"][1]["incomplete"]


def _check_goes_on(http: httpx2.Client, sid: str) -> None:
    answered = http.post(f"/v1/sessions/{sid}/messages", json={"content": "and then?"})
    assert answered.status_code == 200 and answered.json()["status"] == "completed"
    roles = [t["role"] for t in http.get(f"/v1/sessions/{sid}").json()["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_a_killed_gateway_leaves_the_partial_answer_and_ends_it_cleanly(
    serve: GatewayProcess, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    for round_ in range(3):
        n = rng.randint(2, 60)  # a few saves in, or many (throttled replaces)
        serve.start()
        sid, aid, last, seen = _kill_mid_answer(serve, n)
        serve.start()  # the same store, an empty log
        with httpx2.Client(base_url=serve.url, timeout=30) as http:
            try:
                _check_restarted(http, tmp_path, sid, aid, last, seen)
                _check_goes_on(http, sid)
            except AssertionError as exc:
                raise AssertionError(f"seed {SEED} round {round_} (n={n}): {exc}") from exc
        serve.stop()


# ---- in process: the answer is written once, then replaced in place ----------------------


class CountingStore(SQLiteStore):
    """A SQLite store that remembers every assistant write (append or replace)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[tuple[str, StoredMessage]] = []

    def append(
        self, session_id: str, messages: Sequence[StoredMessage], *, expected_version: int
    ) -> int:
        self.writes += [("append", m) for m in messages if m.role == "assistant"]
        return super().append(session_id, messages, expected_version=expected_version)

    def replace(
        self, session_id: str, index: int, message: StoredMessage, *, expected_version: int
    ) -> int:
        self.writes.append(("replace", message))
        return super().replace(session_id, index, message, expected_version=expected_version)


def _settings(sim: Any, tmp: Path) -> GatewaySettings:
    return GatewaySettings(
        upstream=sim.base_url, api_key="sk-test-upstream-0123456789",
        store=str(tmp / "sessions.sqlite3"), keys_path=str(tmp / "gateway.sqlite3"),
        forward_sim_headers=True, partial_save_seconds=0.05,
    )  # fmt: skip


@pytest.fixture
def counted(sim: Any, tmp_path: Path) -> Iterator[tuple[GatewayServer, CountingStore]]:
    store = CountingStore(tmp_path / "sessions.sqlite3")
    server = GatewayServer(_settings(sim, tmp_path), store=store).start()
    yield server, store
    server.stop()


def _one_answer(http: httpx2.Client, sid: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = {"content": QUESTION, "stream": True}
    with http.stream("POST", f"/v1/sessions/{sid}/messages", json=body, headers=headers) as r:
        return list(_events(r))


def test_the_answer_is_appended_once_then_replaced_in_place(
    counted: tuple[GatewayServer, CountingStore],
) -> None:
    server, store = counted
    with server.client() as http:
        sid = http.post("/v1/sessions", json={"parameters": {"thinking": False}}).json()["id"]
        events = _one_answer(http, sid, {"X-Sim-Token-Ms": "5"})
        assert events[-1]["event"] == "done"
        kinds = [kind for kind, _ in store.writes]
        assert kinds[0] == "append" and kinds.count("append") == 1 and len(kinds) >= 3, kinds
        texts = [m.content for _, m in store.writes]
        assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts
        assert all(m.incomplete for _, m in store.writes[:-1])
        assert not store.writes[-1][1].incomplete and texts[-1] == _text(events)

        _one_answer(http, sid, {})  # a second answer: its own message, after its question
        turns = http.get(f"/v1/sessions/{sid}").json()["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant"] * 2
        assert not any(t["incomplete"] for t in turns)
        ids = [t["answer_id"] for t in turns if t["role"] == "assistant"]
        assert len(set(ids)) == 2 and None not in ids


def test_a_cancelled_answer_replaces_its_partial_and_is_not_kept_twice(
    counted: tuple[GatewayServer, CountingStore], sim: Any, tmp_path: Path
) -> None:
    server, store = counted
    with server.client() as http:
        sid = http.post("/v1/sessions", json={"parameters": {"thinking": False}}).json()["id"]
        body = {"content": QUESTION, "background": True}
        handle = http.post(f"/v1/sessions/{sid}/messages", json=body, headers=PACED).json()
        wait_until(lambda: len(store.writes) >= 2, timeout=20)
        http.delete(f"/v1/sessions/{sid}/answers/{handle['answer_id']}")
        wait_until(lambda: http.get(f"/v1/sessions/{sid}").json()["active_answer"] is None)
        turns = http.get(f"/v1/sessions/{sid}").json()["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["incomplete"]
        assert [k for k, _ in store.writes].count("append") == 1
    server.stop()  # a new gateway on the same store: its log never saw the answer
    again = GatewayServer(_settings(sim, tmp_path)).start()
    try:
        with again.client() as http:
            page = http.get(handle["events_url"], params={"wait": 5}).json()
            assert page["finished"] and page["events"][-1]["data"]["type"] == "cancelled"
            assert page["events"][-1]["data"]["saved"]["content"] == turns[1]["content"]
    finally:
        again.stop()


def test_a_cached_answer_is_saved_once_too(counted: tuple[GatewayServer, CountingStore]) -> None:
    server, store = counted
    params = {"parameters": {"thinking": False, "temperature": 0}}  # cached (deterministic)
    with server.client() as http:
        sids = [http.post("/v1/sessions", json=params).json()["id"] for _ in range(2)]
        ends = [_one_answer(http, sid, {})[-1] for sid in sids]
        assert [e["data"].get("cached", False) for e in ends] == [False, True]
        for sid in sids:
            turns = http.get(f"/v1/sessions/{sid}").json()["messages"]
            assert [t["role"] for t in turns] == ["user", "assistant"]
            assert not turns[1]["incomplete"] and turns[1]["content"]
        assert [k for k, _ in store.writes].count("append") == 2
