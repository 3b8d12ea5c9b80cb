"""Sessions over real HTTP: streaming, exact resume with Last-Event-ID, long polling, cancel."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest

from tests.conftest import wait_until
from tests.gateway.conftest import GatewayServer, parse_sse

SLOW = {"X-Sim-Token-Ms": "3"}


def _session(http: httpx2.Client, **body: Any) -> str:
    """A session of plain answers (thinking off) unless `parameters` say otherwise."""
    plain = {"system": "You are terse.", "parameters": {"thinking": False}}
    response = http.post("/v1/sessions", json={**plain, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _events(response: httpx2.Response) -> Iterator[dict[str, str]]:
    """SSE events as they arrive (comments included, as `comment`)."""
    block: list[str] = []
    for line in response.iter_lines():
        if line:
            block.append(line)
            continue
        if block:
            yield parse_sse("\n".join(block) + "\n\n")[0]
            block = []


def _text(events: list[dict[str, str]]) -> str:
    return "".join(orjson.loads(e["data"])["text"] for e in events if e.get("event") == "content")


def _full(http: httpx2.Client, session_id: str, answer_id: str) -> list[dict[str, str]]:
    raw = http.get(f"/v1/sessions/{session_id}/answers/{answer_id}/stream").text
    return [e for e in parse_sse(raw) if "id" in e]


def test_stream_has_ids_types_retry_and_ends_with_done(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
        raw = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True})
        events = parse_sse(raw.text)
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert events[0] == {"retry": "2000"}
        data = [e for e in events if "data" in e]
        answer_id = raw.headers["x-answer-id"]
        assert [e["id"] for e in data] == [f"{answer_id}:{n}" for n in range(1, len(data) + 1)]
        assert {e["event"] for e in data} == {"content", "usage", "done"}
        done = orjson.loads(data[-1]["data"])
        assert data[-1]["event"] == "done" and done["finish_reason"] == "stop"
        assert done["message"]["content"] == _text(data)
        stored = http.get(f"/v1/sessions/{sid}").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["content"] == _text(data)
    assert stored["title"] == "hi" and stored["active_answer"] is None


def test_resume_with_last_event_id_at_random_points_is_exact(gateway: GatewayServer) -> None:
    rng = random.Random(6)
    with gateway.client() as http:
        sid = _session(http)
        for turn in range(3):
            got: list[dict[str, str]] = []
            body = {"content": f"Explain topic {turn} in detail.", "stream": True}
            with http.stream("POST", f"/v1/sessions/{sid}/messages", json=body, headers=SLOW) as r:
                answer_id = r.headers["x-answer-id"]
                cut = rng.randint(1, 12)
                for event in _events(r):
                    if "id" in event:
                        got.append(event)
                    if len(got) >= cut:
                        break
            while not got or got[-1]["event"] != "done":
                headers = {"Last-Event-ID": got[-1]["id"]}
                with http.stream("GET", f"/v1/sessions/{sid}/stream", headers=headers) as r:
                    cut = rng.randint(1, 15)
                    for n, event in enumerate(e for e in _events(r) if "id" in e):
                        got.append(event)
                        if n + 1 >= cut:
                            break
            assert got == _full(http, sid, answer_id)
            assert _text(got) == orjson.loads(got[-1]["data"])["message"]["content"]


def test_generation_runs_on_when_the_client_leaves(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
        body = {"content": "long story please", "stream": True}
        with http.stream("POST", f"/v1/sessions/{sid}/messages", json=body, headers=SLOW) as r:
            answer_id = r.headers["x-answer-id"]
            next(e for e in _events(r) if e.get("event") == "content")
        page = http.get(
            f"/v1/sessions/{sid}/answers/{answer_id}/events", params={"after": 0, "wait": 0}
        ).json()
        assert not page["finished"]

        def finished() -> bool:  # the answer is kept as it grows: done when it is whole
            turns = http.get(f"/v1/sessions/{sid}").json()["messages"]
            return len(turns) == 2 and not turns[-1]["incomplete"]

        wait_until(finished, timeout=20)
        answer = http.get(f"/v1/sessions/{sid}/answers/{answer_id}").json()
    assert answer["status"] == "completed" and answer["message"]["content"]


def test_long_polling_returns_events_after_the_cursor(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
        handle = http.post(
            f"/v1/sessions/{sid}/messages", json={"content": "hello", "background": True},
            headers=SLOW,
        )  # fmt: skip
        assert handle.status_code == 202
        events_url = handle.json()["events_url"]
        after, seen, finished = 0, [], False
        while not finished:
            page = http.get(events_url, params={"after": after, "wait": 5}).json()
            assert page["events"] or page["finished"]
            assert [e["seq"] for e in page["events"]] == list(
                range(after + 1, after + 1 + len(page["events"]))
            )
            seen += page["events"]
            after, finished = page["next_after"], page["finished"]
        stored = http.get(f"/v1/sessions/{sid}").json()["messages"][-1]["content"]
    assert "".join(e["data"]["text"] for e in seen if e["type"] == "content") == stored
    assert seen[-1]["type"] == "done"


def test_long_poll_waits_then_answers_empty(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
        handle = http.post(
            f"/v1/sessions/{sid}/messages", json={"content": "x", "background": True},
            headers={"X-Sim-TTFT-Ms": "3000"},
        ).json()  # fmt: skip
        page = http.get(handle["events_url"], params={"after": 0, "wait": 0.3})
        assert page.status_code == 200
        assert page.json() == {
            "answer_id": handle["answer_id"], "events": [], "finished": False, "next_after": 0,
        }  # fmt: skip
        http.post(f"/v1/sessions/{sid}/cancel")


def test_blocking_mode_returns_the_whole_answer(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http, parameters={"temperature": 0.2, "max_tokens": 4000})
        result = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).json()
        second = http.post(f"/v1/sessions/{sid}/messages", json={"content": "more"}).json()
        stored = http.get(f"/v1/sessions/{sid}").json()
    assert result["status"] == "completed" and result["finish_reason"] == "stop"
    assert [m["content"] for m in stored["messages"]] == [
        "hi", result["message"]["content"], "more", second["message"]["content"],
    ]  # fmt: skip
    assert stored["parameters"] == {"temperature": 0.2, "max_tokens": 4000}


def test_cancel_stops_the_generation_and_the_upstream_request(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sim = sim_factory(token_ms=40)
    gateway = gateway_factory(upstream=sim.base_url)
    with gateway.client() as http:
        sid = _session(http)
        handle = http.post(
            f"/v1/sessions/{sid}/messages", json={"content": "a long one", "background": True}
        ).json()
        page = http.get(handle["events_url"], params={"after": 0, "wait": 10}).json()
        assert page["events"][0]["type"] == "content"
        assert sim.app._tasks, "the upstream request should be running"
        assert http.post(f"/v1/sessions/{sid}/cancel").json() == {
            "answer_id": handle["answer_id"], "cancelled": True,
        }  # fmt: skip
        wait_until(lambda: not sim.app._tasks, timeout=10)
        events = http.get(handle["events_url"]).json()
        assert events["finished"] and events["events"][-1]["type"] == "error"
        assert events["events"][-1]["data"]["type"] == "cancelled"
        stored = http.get(f"/v1/sessions/{sid}").json()["messages"]
        assert stored[-1]["incomplete"] is True and stored[-1]["role"] == "assistant"
        result = http.get(f"/v1/sessions/{sid}/answers/{handle['answer_id']}").json()
        assert result["status"] == "cancelled"


def test_a_second_message_while_answering_is_409(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
        http.post(
            f"/v1/sessions/{sid}/messages", json={"content": "x", "background": True},
            headers={"X-Sim-TTFT-Ms": "2000"},
        )  # fmt: skip
        again = http.post(f"/v1/sessions/{sid}/messages", json={"content": "y"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "answer_in_progress"
        assert http.delete(f"/v1/sessions/{sid}").status_code == 204
        assert http.get(f"/v1/sessions/{sid}").status_code == 404


def test_upstream_failure_becomes_an_error_event_and_status(gateway_factory: Any) -> None:
    gateway = gateway_factory(upstream_max_retries=0)
    with gateway.client() as http:
        sid = _session(http)
        bad = {"X-Sim-Status": "503"}
        blocking = http.post(f"/v1/sessions/{sid}/messages", json={"content": "x"}, headers=bad)
        assert blocking.status_code == 503
        assert blocking.json()["error"]["code"] == "upstream_overloaded"
        raw = http.post(
            f"/v1/sessions/{sid}/messages", json={"content": "x", "stream": True}, headers=bad
        )
        events = [e for e in parse_sse(raw.text) if "data" in e]
        assert events[-1]["event"] == "error"
        assert orjson.loads(events[-1]["data"])["status"] == 503


def test_session_list_and_detail(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        ids = [_session(http, title=f"t{n}") for n in range(3)]
        listed = http.get("/v1/sessions", params={"limit": 2}).json()["data"]
        assert len(listed) == 2 and {s["id"] for s in listed} <= set(ids)
        assert http.get(f"/v1/sessions/{ids[0]}").json()["system"] == "You are terse."


@pytest.mark.redis
def test_sessions_in_redis(gateway_factory: Any, redis_url: str) -> None:
    gateway = gateway_factory(store=redis_url)
    with gateway.client() as http:
        sid = _session(http)
        answer = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).json()
        stored = http.get(f"/v1/sessions/{sid}").json()
    assert answer["status"] == "completed"
    assert [m["content"] for m in stored["messages"]] == ["hi", answer["message"]["content"]]


def test_create_app_takes_its_stream_log_and_store(sim: Any, tmp_path: Any) -> None:
    from dskit.gateway import GatewaySettings, MemoryStreamLog
    from dskit.store import MemoryStore

    log, store = MemoryStreamLog(), MemoryStore()
    settings = GatewaySettings(
        upstream=sim.base_url, api_key="sk-upstream-000000",
        keys_path=str(tmp_path / "keys.sqlite3"), store="memory",
    )  # fmt: skip
    server = GatewayServer(settings, log=log, store=store).start()
    try:
        with server.client() as http:
            sid = _session(http)
            http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
    finally:
        server.stop()
    assert len(log) == 1
    assert [m.role for m in store.load(sid).messages] == ["user", "assistant"]


async def test_memory_log_expires_finished_answers_and_keeps_its_cap() -> None:
    from dskit.gateway import MemoryStreamLog

    log = MemoryStreamLog(ttl=900.0, max_answers=3)
    for name in ("a", "b", "c"):
        await log.create(name, f"s-{name}")
    await log.finish("b")
    await log.create("d", "s-d")  # at the cap: the finished one goes, running ones stay
    assert [await log.info(n) is not None for n in "abcd"] == [True, False, True, True]
    await log.create("e", "s-e")  # nothing finished: the oldest goes
    assert await log.info("a") is None and await log.info("e") is not None

    ttl_log = MemoryStreamLog(ttl=0.0)
    await ttl_log.create("x", "s-x")
    await ttl_log.finish("x")
    await ttl_log.create("y", "s-y")  # a finished answer past its TTL is dropped
    assert await ttl_log.info("x") is None and len(ttl_log) == 1


async def test_log_changes_wake_every_waiting_reader_time_out_and_forget_cancelled_ones() -> None:
    import asyncio

    from dskit.gateway.backends._log import Changes

    changes = Changes()
    readers = [asyncio.ensure_future(changes.wait(30.0)) for _ in range(3)]
    cancelled = asyncio.ensure_future(changes.wait(30.0))
    await asyncio.sleep(0)  # every reader is waiting now
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert len(changes._waiters) == 3  # the cancelled reader left nothing behind
    changes.notify()
    await asyncio.wait_for(asyncio.gather(*readers), 5.0)
    late = asyncio.ensure_future(changes.wait(0.05))  # a later reader waits for the next
    await asyncio.sleep(0)
    assert not late.done()
    await asyncio.wait_for(late, 5.0)  # its time ran out
    assert changes._waiters == []


async def test_log_changes_arm_one_timer_for_a_readers_waits_and_wake_each_at_its_deadline() -> (
    None
):
    """A reader waits once per token with the same heartbeat: one timer serves all those
    waits (a timer each cost a heap push and a cancel per token); readers with shorter
    waits re-arm it and are each woken at their own deadline, never before."""
    import asyncio

    from dskit.gateway.backends._log import Changes

    changes, loop = Changes(), asyncio.get_running_loop()
    reader = asyncio.ensure_future(changes.wait(30.0))
    await asyncio.sleep(0)
    timer = changes._timer
    for _ in range(100):  # a token each: notified, then waiting again
        changes.notify()
        await reader
        reader = asyncio.ensure_future(changes.wait(30.0))
        await asyncio.sleep(0)
    assert timer is not None and changes._timer is timer  # armed once
    started = loop.time()
    short, middle = (asyncio.ensure_future(changes.wait(s)) for s in (0.05, 0.2))
    await asyncio.wait_for(short, 5.0)
    assert loop.time() - started >= 0.05 and not middle.done() and not reader.done()
    await asyncio.wait_for(middle, 5.0)
    assert loop.time() - started >= 0.2 and not reader.done()
    changes.notify()
    await asyncio.wait_for(reader, 5.0)


async def _keep_tokens_in_memory_log(payloads: list[bytes]) -> list[Any]:
    from dskit.gateway import MemoryStreamLog

    log = MemoryStreamLog()
    await log.create("a", "s")
    for data in payloads:
        await log.append("a", "content", data)
    return [log]


async def _keep_tokens_in_local_tails(payloads: list[bytes]) -> list[Any]:
    from dskit.gateway.backends._redis_tail import LocalTails

    tails = LocalTails()
    tails.open("a")
    for seq, data in enumerate(payloads, 1):
        tails.add("a", seq, "content", data)
    return [tails]


@pytest.mark.parametrize("keep", [_keep_tokens_in_memory_log, _keep_tokens_in_local_tails])
async def test_a_kept_log_entry_costs_its_own_size_not_the_json_encoders_buffer(keep: Any) -> None:
    """The lifecycle logs each token as `orjson.dumps` made it; orjson 3.12 and later
    returns JSON inside its 4 KiB working buffer, and a log that kept those held 4 KiB a
    token (200 KB an answer, up to 2 GB at the memory log's 10,000 answers)."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payloads = [orjson.dumps({"text": f" token {i}"}) for i in range(500)]
        held = await keep(payloads)
        del payloads  # what is left is what the log holds
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held and grown < 500 * 400, f"{grown / 500:.0f} bytes held per token"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "bogus-model"}, "model"),
        ({"parameters": {"response_format": {"type": "xml"}}}, "response_format"),
        ({"parameters": {"temperature": False}}, "temperature"),
        ({"parameters": {"effort": "extreme"}}, "effort"),
    ],
)
def test_a_session_with_a_bad_model_or_parameter_is_refused_and_not_stored(
    gateway: GatewayServer, body: dict[str, Any], param: str
) -> None:
    with gateway.client() as http:
        refused = http.post("/v1/sessions", json=body)
        assert refused.status_code in (400, 422), refused.text
        assert param in refused.text
        assert http.get("/v1/sessions").json()["data"] == []
