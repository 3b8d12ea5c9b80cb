"""Upstream pool: fallbacks in order over real HTTP (a dead port, then the simulator)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from dskit.client._async import AsyncDeepSeek
from dskit.client._config import RetryPolicy
from dskit.gateway.upstreams._breaker import (
    AllUpstreamsDownError,
    BreakerSettings,
    Upstream,
    UpstreamChooser,
    parse_upstreams,
)
from dskit.gateway.upstreams._pool import UpstreamPool
from tests.client.conftest import faults_once
from tests.conftest import free_port

MESSAGES = [{"role": "user", "content": "hello there"}]


def test_fallback_specs() -> None:
    upstreams = parse_upstreams(
        "http://main", ["http://b:1", "model:deepseek-v4-pro", "http://c#model:x"]
    )
    assert upstreams == [
        Upstream("primary", "http://main"), Upstream("fallback1", "http://b:1"),
        Upstream("fallback2", "http://main", "deepseek-v4-pro"),
        Upstream("fallback3", "http://c", "x"),
    ]  # fmt: skip
    for bad in ("", "bogus", "model:", "http://c#bogus"):  # a bare word was taken as a model
        with pytest.raises(ValueError, match="a fallback is http"):
            parse_upstreams(None, [bad])
    with pytest.raises(ValueError, match="invalid fallback URL"):
        parse_upstreams(None, ["ftp://x#model:y"])


async def test_dead_upstream_falls_over_then_its_breaker_skips_it(sim: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    clients = {
        url: AsyncDeepSeek(api_key="sk-test", base_url=url, retry=RetryPolicy(max_retries=0))
        for url in (dead, sim.base_url)
    }
    chooser = UpstreamChooser(
        [Upstream("primary", dead), Upstream("backup", sim.base_url)],
        BreakerSettings(failure_threshold=2, cooldown=30),
    )
    pool = UpstreamPool(chooser, clients)
    try:
        for _ in range(3):
            upstream, stream, first = await pool.open(
                MESSAGES, {"model": "deepseek-flash", "thinking": False}
            )
            async with stream:
                assert upstream.name == "backup" and first is not None
                result = await stream.final()
            pool.report(upstream, None)
            assert result.content
        assert chooser.states() == {"primary": "open", "backup": "closed"}
        chooser.breakers["backup"].failure()
        chooser.breakers["backup"].failure()
        began = time.monotonic()
        with pytest.raises(AllUpstreamsDownError) as caught:
            await pool.open(MESSAGES, {"model": "deepseek-flash", "thinking": False})
        assert time.monotonic() - began < 0.1, "an open breaker answers at once"
        assert 25 < caught.value.retry_after <= 30
    finally:
        await pool.aclose()


async def test_request_errors_do_not_fail_over(sim: Any) -> None:
    client = AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url)
    chooser = UpstreamChooser([Upstream("a", sim.base_url), Upstream("b", sim.base_url)])
    pool = UpstreamPool(chooser, {sim.base_url: client})
    try:
        with pytest.raises(Exception, match=r"(?i)model"):
            await pool.open(MESSAGES, {"model": "no-such-model"})
        assert chooser.states() == {"a": "closed", "b": "closed"}
    finally:
        await pool.aclose()


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_an_upstream_503_retried_once_counts_one_retry(
    gateway_factory: Callable[..., Any], stream: bool
) -> None:
    """The retry happens before the first event, inside `UpstreamPool.open`, which
    consumes the `retrying` event: the pool counts it itself."""
    gateway = gateway_factory()
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": MESSAGES,
        "stream": stream,
    }
    with gateway.client() as http:
        answer = http.post("/v1/chat/completions", json=body, headers=faults_once(Status=503))
        assert answer.status_code == 200
        metrics = http.get("/metrics").text
    assert "dskit_gateway_upstream_retries_total 1.0" in metrics


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_answers_broken_mid_stream_open_the_breaker(
    gateway_factory: Callable[..., Any], stream: bool
) -> None:
    """A relayed answer that breaks after its first event (and cannot be resumed) tells
    the upstream's breaker, as a session answer does: two such and it opens."""
    gateway = gateway_factory(
        upstream_max_resumes=0, breaker=BreakerSettings(failure_threshold=2, cooldown=30)
    )
    chooser = gateway.gw.pool.chooser
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": MESSAGES,
        "stream": stream,
    }
    broken = faults_once(times=2, Drop_After_Events=3)
    with gateway.client() as http:
        for _ in range(2):
            answer = http.post("/v1/chat/completions", json=body, headers=broken)
            assert answer.status_code != 200 or "error" in answer.text
    assert chooser.states() == {"primary": "open"}
