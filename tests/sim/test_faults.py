"""Every X-Sim-* control: errors, broken and odd streams, stalls, queues, fault keys."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx2
import pytest

from tests.sim.sim_helpers import chat_body, joined, sse_chunks, sse_events

STREAM = chat_body("Fault injection please", stream=True)


def read_broken(client: httpx2.Client, headers: dict[str, str], body: Any = STREAM) -> bytes:
    """Read a response that must end in a broken transfer; return what arrived."""
    received = bytearray()
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        client.stream("POST", "/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    return bytes(received)


def choices(events: list[str]) -> list[Any]:
    """Events without their per-response id and timestamp (those differ between calls)."""
    return [e if e == "[DONE]" else json.loads(e)["choices"] for e in events]


def full_events(client: httpx2.Client) -> list[Any]:
    return choices(sse_events(client.post("/chat/completions", json=STREAM).content))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "service_unavailable_error"),
        (402, "unknown_error"),
    ],
)
def test_status_fault(client: httpx2.Client, status: int, kind: str) -> None:
    response = client.post("/chat/completions", json=STREAM, headers={"X-Sim-Status": str(status)})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and error["message"]
    assert "retry-after" not in response.headers


def test_retry_after_headers_and_text_body(client: httpx2.Client) -> None:
    headers = {"X-Sim-Status": "503", "X-Sim-Retry-After": "2", "X-Sim-Retry-After-Ms": "1500"}
    response = client.post("/chat/completions", json=STREAM, headers=headers)
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    text = client.post(
        "/chat/completions",
        json=STREAM,
        headers={"X-Sim-Status": "500", "X-Sim-Error-Body": "upstream went away"},
    )
    assert text.status_code == 500
    assert text.headers["content-type"] == "application/octet-stream"
    assert text.content == b"upstream went away"
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.content)


def test_drop_after_events(client: httpx2.Client) -> None:
    received = read_broken(client, {"X-Sim-Drop-After-Events": "4"})
    events = sse_events(received)
    assert len(events) == 4
    assert choices(events) == full_events(client)[:4]


def test_drop_after_bytes(client: httpx2.Client) -> None:
    whole = client.post("/chat/completions", json=STREAM).content
    received = read_broken(client, {"X-Sim-Drop-After-Bytes": "700"})
    assert len(received) == 700
    # same text, except the per-response id and created
    assert received[:10] == whole[:10]
    body = chat_body("not streamed")
    received = read_broken(client, {"X-Sim-Drop-After-Bytes": "50"}, body)
    assert len(received) == 50


def test_end_after_events_is_a_clean_but_short_end(client: httpx2.Client) -> None:
    response = client.post(
        "/chat/completions", json=STREAM, headers={"X-Sim-End-After-Events": "3"}
    )
    events = sse_events(response.content)
    assert len(events) == 3 and "[DONE]" not in events
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events)


def test_no_done(client: httpx2.Client) -> None:
    response = client.post("/chat/completions", json=STREAM, headers={"X-Sim-No-Done": "1"})
    events = sse_events(response.content)
    assert events[-1] != "[DONE]"
    assert json.loads(events[-1])["choices"][0]["finish_reason"] == "stop"
    assert choices(events) == full_events(client)[:-1]


def test_malformed_at(client: httpx2.Client) -> None:
    response = client.post("/chat/completions", json=STREAM, headers={"X-Sim-Malformed-At": "3"})
    events = sse_events(response.content)
    json.loads(events[1])
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[2])
    json.loads(events[3])
    assert events[-1] == "[DONE]"


def test_insufficient_after_events(client: httpx2.Client) -> None:
    headers = {"X-Sim-Insufficient-After-Events": "5"}
    chunks = sse_chunks(client.post("/chat/completions", json=STREAM, headers=headers).content)
    assert len(chunks) == 7  # role, 5 pieces, finish
    assert chunks[-1]["choices"][0]["finish_reason"] == "insufficient_system_resource"
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    whole = client.post("/chat/completions", json={**STREAM, "stream": False}, headers=headers)
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "insufficient_system_resource"
    assert choice["message"]["content"] == joined(chunks)


def test_stall_is_silence_then_the_rest(client: httpx2.Client) -> None:
    headers = {"X-Sim-Stall-After-Events": "2", "X-Sim-Stall-Ms": "300"}
    arrivals: list[tuple[float, bytes]] = []
    with client.stream("POST", "/chat/completions", json=STREAM, headers=headers) as response:
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    received = b"".join(chunk for _, chunk in arrivals)
    assert choices(sse_events(received)) == full_events(client)
    gaps = [arrivals[i + 1][0] - arrivals[i][0] for i in range(len(arrivals) - 1)]
    longest = max(range(len(gaps)), key=gaps.__getitem__)
    assert gaps[longest] >= 0.28
    before = b"".join(chunk for _, chunk in arrivals[: longest + 1])
    assert len(sse_events(before)) == 2


def test_streaming_keep_alives_while_queued(client: httpx2.Client) -> None:
    headers = {"X-Sim-Queue-Ms": "350", "X-Sim-Keepalive-Ms": "100"}
    response = client.post("/chat/completions", json=STREAM, headers=headers)
    raw = response.content
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b": keep-alive\n\n") >= 3
    assert choices(sse_events(raw)) == full_events(client)


def test_non_streaming_blank_lines_while_queued(client: httpx2.Client) -> None:
    body = chat_body("queued, not streamed")
    headers = {"X-Sim-Queue-Ms": "250", "X-Sim-Keepalive-Ms": "50"}
    raw = client.post("/chat/completions", json=body, headers=headers).content
    blank = len(raw) - len(raw.lstrip(b"\n"))
    assert blank >= 4
    assert json.loads(raw)["object"] == "chat.completion"


def test_latency_headers(client: httpx2.Client) -> None:
    started = time.monotonic()
    arrivals = []
    headers = {"X-Sim-TTFT-Ms": "150", "X-Sim-Token-Ms": "20"}
    body = chat_body("slow please", stream=True, max_tokens=10)
    with client.stream("POST", "/chat/completions", json=body, headers=headers) as response:
        for _chunk in response.iter_raw():
            arrivals.append(time.monotonic() - started)
    assert arrivals[0] >= 0.14
    assert arrivals[-1] - arrivals[0] >= 9 * 0.019  # one write per piece, 20 ms apart
    assert len(arrivals) >= 4


def test_fault_key_limits_faults_to_first_requests(client: httpx2.Client) -> None:
    key = uuid.uuid4().hex
    headers = {"X-Sim-Fault-Key": key, "X-Sim-Fault-Times": "2", "X-Sim-Status": "503"}
    codes = [
        client.post("/chat/completions", json=STREAM, headers=headers).status_code for _ in range(4)
    ]
    assert codes == [503, 503, 200, 200]
    drop = {"X-Sim-Fault-Key": uuid.uuid4().hex, "X-Sim-Drop-After-Events": "2"}
    read_broken(client, drop)
    assert sse_chunks(client.post("/chat/completions", json=STREAM, headers=drop).content)


def test_faults_are_counted(sim_factory: Any) -> None:
    sim = sim_factory()
    with httpx2.Client(base_url=sim.base_url, headers={"Authorization": "Bearer k"}) as http:
        http.post("/chat/completions", json=STREAM, headers={"X-Sim-No-Done": "1"})
        http.post("/chat/completions", json=STREAM)
    assert sim.stats.faults_injected == 1
    assert sim.stats.requests == 2
    assert sim.stats.by_path == {"/chat/completions": 2}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Sim-Status": "200"},
        {"X-Sim-Status": "soon"},
        {"X-Sim-Drop-After-Events": "-1"},
        {"X-Sim-TTFT-Ms": "fast"},
        {"X-Sim-Keepalive-Ms": "0"},
        {"X-Sim-Fault-Key": "k", "X-Sim-Fault-Times": "x"},
    ],
)
def test_bad_control_headers_are_400(client: httpx2.Client, headers: dict[str, str]) -> None:
    response = client.post("/chat/completions", json=STREAM, headers=headers)
    assert response.status_code == 400
    assert "x-sim-" in response.json()["error"]["message"].lower()


def test_random_faults_are_seeded(sim_factory: Any) -> None:
    def outcomes(seed: int) -> list[int]:
        sim = sim_factory(fault_rate=0.5, faults=("overloaded", "rate_limit"), seed=seed)
        with httpx2.Client(base_url=sim.base_url, headers={"Authorization": "Bearer k"}) as http:
            codes = [http.post("/chat/completions", json=STREAM).status_code for _ in range(30)]
        assert sim.stats.faults_injected == sum(c != 200 for c in codes)
        return codes

    first = outcomes(7)
    assert first == outcomes(7)
    assert set(first) == {200, 429, 503}  # both configured kinds drawn, and nothing else
    assert 5 <= sum(c != 200 for c in first) <= 25
