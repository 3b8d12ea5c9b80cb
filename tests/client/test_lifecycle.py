"""Connections are always released; pacing, HTTP/2 and logging behave."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dskit import DeepSeek
from dskit.client import ContentDelta
from dskit.client._config import Pace

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
        with client.stream("pace me") as stream:
            text = "".join(e.text for e in stream if isinstance(e, ContentDelta))
    # the bucket starts full (10 chars), then delivers 100 chars per (fake) second
    assert sum(clock.sleeps) == pytest.approx((len(text) - 10) / 100.0, abs=0.05)


def test_http2_is_opt_in_and_works(sim: Any) -> None:
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
