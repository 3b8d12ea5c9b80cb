"""Three `dskit serve` processes on one Redis: a stream survives SIGKILL of its instance,
rate limits hold across instances, the cache is shared."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from dskit import DeepSeek
from tests.gateway_redis._fleet import GatewayProcess, sse_events, start_fleet

pytestmark = [pytest.mark.redis, pytest.mark.slow]
QUESTION = "Tell me a long story about rivers and mountains"
PACED = {"X-Sim-Token-Ms": "8"}


@pytest.fixture
def fleet(
    redis_url: str, redis_prefix: str, sim: Any, tmp_path: Path
) -> Iterator[list[GatewayProcess]]:
    gateways = start_fleet(3, redis_url, redis_prefix, sim.base_url, tmp_path)
    yield gateways
    for gateway in gateways:
        gateway.stop()


def unbroken(sim: Any, question: str) -> str:
    return pieces(sim, question)[0]


def pieces(sim: Any, question: str) -> tuple[str, int]:
    """The whole answer, and how many content events carry it."""
    messages = [{"role": "user", "content": question}]
    with DeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        events = list(client.stream(messages, model="deepseek-flash", thinking=False))
    return events[-1].result.content, sum(e.type == "content" for e in events)


def new_session(gateway: GatewayProcess) -> str:
    response = httpx2.post(
        gateway.url + "/v1/sessions",
        json={"model": "deepseek-flash", "parameters": {"thinking": False}},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def stream_until_killed(gateway: GatewayProcess, session: str, events: int) -> list[dict[str, Any]]:
    """Stream an answer through `gateway`, SIGKILL it after `events` content events."""
    return stream_until(gateway, session, events, gateway.kill)


def stream_until(
    gateway: GatewayProcess, session: str, events: int, then: Callable[[], None],
    headers: dict[str, str] = PACED,
) -> list[dict[str, Any]]:  # fmt: skip
    """Stream an answer through `gateway`; after `events` content events call `then`."""
    seen: list[dict[str, Any]] = []
    url = f"{gateway.url}/v1/sessions/{session}/messages"
    body = {"content": QUESTION, "stream": True}
    with httpx2.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for event in sse_events(response):
            seen.append(event)
            if sum(e["event"] == "content" for e in seen) >= events:
                then()
                break
    return seen


def resume(gateway: GatewayProcess, session: str, last_id: str) -> list[dict[str, Any]]:
    url = f"{gateway.url}/v1/sessions/{session}/stream"
    rest: list[dict[str, Any]] = []
    with httpx2.stream("GET", url, headers={"Last-Event-ID": last_id}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for event in sse_events(response):
            rest.append(event)
            if event["event"] in ("done", "error"):
                break
    return rest


def test_sigkill_mid_answer_resumes_exactly_through_another_instance(
    fleet: list[GatewayProcess], sim: Any
) -> None:
    expected, count = pieces(sim, QUESTION)
    rng = random.Random(7)
    restarts: dict[int, threading.Thread] = {}
    for round_ in range(3):
        streaming, other = fleet[round_], fleet[(round_ + 1) % 3]
        if (restarting := restarts.pop((round_ + 1) % 3, None)) is not None:
            restarting.join(30)  # the last round resumes on the first round's killed one
        session = new_session(streaming)
        kill_at = rng.randint(1, count - 1)  # strictly mid-answer
        before = stream_until_killed(streaming, session, kill_at)
        assert streaming.process is None, "the answer ended before the kill point"
        restarts[round_] = threading.Thread(target=streaming.start)
        restarts[round_].start()
        after = resume(other, session, str(before[-1]["id"]))
        events = before + after
        assert events[-1]["event"] == "done", events[-1]
        seqs = [int(str(e["id"]).rpartition(":")[2]) for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), f"gap or repeat at kill point {kill_at}"
        text = "".join(e["data"]["text"] for e in events if e["event"] == "content")
        assert text == expected, f"kill point {kill_at}"
        stored = httpx2.get(f"{other.url}/v1/sessions/{session}", timeout=10).json()
        assert stored["messages"][-1]["content"] == expected
        assert not stored["messages"][-1]["incomplete"]
    for restart in restarts.values():
        restart.join(30)


def test_a_stopped_instance_hands_its_answer_over_at_once(
    redis_url: str, redis_prefix: str, sim: Any, tmp_path: Path
) -> None:
    """SIGTERM mid-answer: the instance releases the answer's lease as it stops, so another
    continues it at once (the lease here is 30 s: waiting it out would fail the test)."""
    fleet = start_fleet(2, redis_url, redis_prefix + "ho", sim.base_url, tmp_path,
                        env={"DSKIT_GATEWAY_LEASE_SECONDS": "30"})  # fmt: skip
    stopping, other = fleet
    try:
        expected = unbroken(sim, QUESTION)
        session = new_session(stopping)
        assert stopping.process is not None
        process = stopping.process
        slow = {"X-Sim-Token-Ms": "25"}  # seconds left when it stops: it cannot just finish
        before = stream_until(
            stopping, session, 10, lambda: process.send_signal(signal.SIGTERM), slow
        )
        stopped_at = time.monotonic()
        after = resume(other, session, str(before[-1]["id"]))
        assert time.monotonic() - stopped_at < 15, "continued at once, not after the lease"
        assert process.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        log = next(tmp_path.glob(f"{stopping.name}-*.log")).read_text()
        assert "handed over to another instance" in log
        events = before + after
        assert events[-1]["event"] == "done", events[-1]
        seqs = [int(str(e["id"]).rpartition(":")[2]) for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), "no gap, no repeat"
        assert "".join(e["data"]["text"] for e in events if e["event"] == "content") == expected
        stored = httpx2.get(f"{other.url}/v1/sessions/{session}", timeout=10).json()
        assert stored["messages"][-1]["content"] == expected
    finally:
        for gateway in fleet:
            gateway.stop()


@pytest.fixture
def limited_fleet(
    redis_url: str, redis_prefix: str, sim: Any, tmp_path: Path
) -> Iterator[list[GatewayProcess]]:
    gateways = start_fleet(
        3, redis_url, redis_prefix + "rl", sim.base_url, tmp_path, "--rate-limit", "0.01"
    )
    yield gateways
    for gateway in gateways:
        gateway.stop()


def test_rate_limit_holds_across_three_instances(limited_fleet: list[GatewayProcess]) -> None:
    statuses: list[int] = []
    retry_after: list[str] = []
    lock = threading.Lock()

    def hammer(gateway: GatewayProcess) -> None:
        with httpx2.Client(base_url=gateway.url, timeout=10) as client:
            for _ in range(12):
                response = client.post(
                    "/v1/sessions",
                    json={"model": "deepseek-flash", "parameters": {"thinking": False}},
                )
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        retry_after.append(response.headers["Retry-After"])

    threads = [threading.Thread(target=hammer, args=(g,)) for g in limited_fleet for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 72 and set(statuses) <= {201, 429}
    assert 9 <= statuses.count(201) <= 11, "a burst of 10 for the whole fleet, not per instance"
    assert all(int(value) >= 1 for value in retry_after)


def test_cache_is_shared_and_keyed_on_the_whole_conversation(
    fleet: list[GatewayProcess], sim: Any
) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    body = {"model": "deepseek-flash", "temperature": 0, "messages": question}
    first = httpx2.post(fleet[0].url + "/v1/chat/completions", json=body, timeout=30)
    assert first.status_code == 200 and first.headers["X-Dskit-Cache"] == "miss"
    second = httpx2.post(fleet[1].url + "/v1/chat/completions", json=body, timeout=30)
    assert second.headers["X-Dskit-Cache"] == "hit" and second.json()["cached"] is True
    a, b = first.json(), second.json()
    for part in ("content", "reasoning_content"):
        assert a["choices"][0]["message"][part] == b["choices"][0]["message"][part]
    assert b["choices"][0]["message"]["reasoning_content"]
    assert a["usage"] == b["usage"]
    streamed = httpx2.post(
        fleet[2].url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30
    )
    assert streamed.headers["X-Dskit-Cache"] == "hit"
    assert a["choices"][0]["message"]["content"] in _joined(streamed.text)
    multi = {**body, "messages": [
        {"role": "user", "content": "Tell me about Italy."},
        {"role": "assistant", "content": "Italy is a country."},
        {"role": "user", "content": "What is the capital of France?"},
    ]}  # fmt: skip
    other = httpx2.post(fleet[1].url + "/v1/chat/completions", json=multi, timeout=30)
    assert other.headers["X-Dskit-Cache"] == "miss"
    metrics = httpx2.get(fleet[1].url + "/metrics", timeout=10).text
    assert 'dskit_gateway_cache_total{result="hit"} 1.0' in metrics
    assert 'dskit_gateway_cache_total{result="miss"} 1.0' in metrics


def _joined(sse_text: str) -> str:
    import orjson

    text = []
    for line in sse_text.splitlines():
        if line.startswith("data: {"):
            delta = orjson.loads(line[6:])["choices"][0]["delta"]
            text.append(delta.get("content") or "")
    return "".join(text)
