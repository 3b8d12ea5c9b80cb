"""Connections are always released; pacing, HTTP/2 and logging behave."""

from __future__ import annotations

import gzip
import http.server
import logging
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest

from dskit import APIResponseError, DeepSeek, Limits
from dskit.client import ContentDelta
from dskit.client._config import Pace
from tests.conftest import LocalHTTPServer

from .conftest import CountingTransport, FakeClock, faults_once


def _client(sim: Any, transport: CountingTransport, **kwargs: Any) -> DeepSeek:
    return DeepSeek("sk-test-000000", base_url=sim.base_url, transport=transport, **kwargs)


def test_leaving_a_stream_early_closes_its_response(sim: Any) -> None:
    transport = CountingTransport()
    with _client(sim, transport) as client:
        with client.stream("a long answer please") as stream:
            next(iter(stream))
        assert transport.opened == 1 and transport.closed == 1
        # the pool is usable afterwards
        assert client.chat("again").content


def test_every_attempt_of_a_resumed_stream_is_closed(sim: Any) -> None:
    transport = CountingTransport()
    with _client(sim, transport, retry=None) as client:
        client.chat("resume", extra_headers=faults_once(2, Drop_After_Events=4))
        client.chat("errors", extra_headers=faults_once(1, Status=503))
    assert transport.opened == transport.closed == 5


def test_exception_in_the_consumer_closes_the_response(sim: Any) -> None:
    transport = CountingTransport()
    with _client(sim, transport) as client:
        with pytest.raises(RuntimeError), client.stream("hello") as stream:
            for _ in stream:
                raise RuntimeError("consumer failed")
    assert transport.opened == transport.closed == 1


def test_pacing_spreads_text_at_the_configured_rate(sim: Any) -> None:
    clock = FakeClock()
    pace = Pace(chars_per_second=100.0, burst=10)
    with DeepSeek("sk-test-000000", base_url=sim.base_url, clock=clock, pace=pace) as client:
        with client.stream("pace me", thinking=False) as stream:
            text = "".join(e.text for e in stream if isinstance(e, ContentDelta))
    # the bucket starts full (10 chars), then delivers 100 chars per (fake) second
    assert sum(clock.sleeps) == pytest.approx((len(text) - 10) / 100.0, abs=0.05)


def test_http2_opt_in_falls_back_to_http11_on_a_server_without_h2(sim: Any) -> None:
    # uvicorn (the simulator) speaks only HTTP/1.1: opting in must not break a call there
    with DeepSeek("sk-test-000000", base_url=sim.base_url, http2=True) as client:
        assert client.chat("over h2 if offered").content


def test_logs_carry_request_ids_and_never_the_key(
    sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dskit")
    secret = "sk-very-secret-key-000111222"
    with DeepSeek(secret, base_url=sim.base_url, retry=None) as client:
        client.chat("log me", extra_headers=faults_once(1, Drop_After_Events=3))
    assert "resume 1" in caplog.text
    assert "chat done" in caplog.text and "request=" in caplog.text
    assert secret not in caplog.text


class _ReplayHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST with one recorded body, gzip-compressed or not."""

    body = b""
    gzip = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        payload = gzip.compress(self.body) if self.gzip else self.body
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        if self.gzip:
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def replay_server() -> Iterator[type[_ReplayHandler]]:
    handler = type("Handler", (_ReplayHandler,), {})
    server = LocalHTTPServer(handler)
    handler.url = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    yield handler
    server.close()


def _recorded_stream(sim: Any) -> bytes:
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": "gz"}],
        "stream": True,
    }
    headers = {"Authorization": "Bearer sk-test-000000"}
    return httpx2.post(f"{sim.base_url}/chat/completions", json=body, headers=headers).content


def test_compressed_streams_are_accepted(sim: Any, replay_server: Any) -> None:
    replay_server.body = _recorded_stream(sim)
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as direct:
        expected = direct.chat("gz").content
    with DeepSeek("sk-test-000000", base_url=replay_server.url) as client:
        assert client.chat("gz").content == expected


def test_an_oversized_event_ends_with_a_clear_error(sim: Any, replay_server: Any) -> None:
    replay_server.gzip = False
    replay_server.body = b"data: " + b"x" * 5000 + b"\n\n"
    limits = Limits(max_event_bytes=1024)
    with DeepSeek("sk-test-000000", base_url=replay_server.url, limits=limits) as client:
        with pytest.raises(APIResponseError, match="1024"):
            client.chat("big")


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "r", "choices": [choice]}) + b"\n\n"


def test_ready_says_whether_the_next_event_already_arrived(replay_server: Any) -> None:
    """`ready` is what a relay holds its write on: True only while a data chunk of the
    same read is still undigested; a trailing comment or [DONE] must not keep it True."""
    replay_server.gzip = False
    replay_server.body = (
        _chunk({"role": "assistant", "content": "a"})
        + _chunk({"content": "b"}, finish="stop")
        + b": keep-alive\n\n"
        + b"data: [DONE]\n\n"
    )
    with DeepSeek("sk-test-000000", base_url=replay_server.url) as client:
        with client.stream("hi") as stream:
            seen = [(event.type, stream.ready) for event in stream]
    assert seen[:2] == [("content", True), ("content", False)]
    assert seen[-1] == ("done", False)
