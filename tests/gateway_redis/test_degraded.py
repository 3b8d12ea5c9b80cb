"""Degraded operation: fallbacks, open breakers, cached answers when all upstreams are down,
and a clear 503 (then recovery without restart) while Redis is away."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dskit.gateway.upstreams._breaker import BreakerSettings
from tests.conftest import RedisServer, free_port, wait_until
from tests.gateway.conftest import GatewayServer

QUESTION = [{"role": "user", "content": "Name three rivers"}]


def ask(http: Any, content: str = "Name three rivers", **extra: Any) -> Any:
    headers = extra.pop("headers", {})
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": content}],
        **extra,
    }
    return http.post("/v1/chat/completions", json=body, headers=headers)


def test_dead_primary_falls_back_in_order(
    gateway_factory: Callable[..., GatewayServer],
    sim: Any,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = gateway_factory(
        upstream=dead, fallbacks=(sim.base_url,), upstream_max_retries=0,
        breaker=BreakerSettings(failure_threshold=2, cooldown=60),
    )  # fmt: skip
    with gateway.client() as http:
        for _ in range(3):
            response = ask(http, stream=True)
            assert response.status_code == 200 and "data: [DONE]" in response.text
        metrics = http.get("/metrics").text
    assert 'dskit_gateway_upstream_open{upstream="primary"} 1.0' in metrics
    assert 'dskit_gateway_upstream_open{upstream="fallback1"} 0.0' in metrics


def test_all_down_serves_cached_answers_else_a_quick_503(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Any,
) -> None:
    upstream = sim_factory()
    gateway = gateway_factory(
        upstream=upstream.base_url, upstream_max_retries=0,
        breaker=BreakerSettings(failure_threshold=1, cooldown=30),
    )  # fmt: skip
    with gateway.client() as http:
        stored = ask(http, temperature=0.7, headers={"X-Dskit-Cache": "on"})
        assert stored.status_code == 200 and stored.headers["X-Dskit-Cache"] == "miss"
        upstream.stop()
        assert ask(http, temperature=0.7).status_code == 502  # the failure opens the breaker
        degraded = ask(http, temperature=0.7)
        assert degraded.status_code == 200 and degraded.headers["X-Dskit-Cache"] == "hit"
        assert degraded.json()["cached"] is True
        assert degraded.json()["choices"][0]["message"] == stored.json()["choices"][0]["message"]
        began = time.monotonic()
        refused = ask(http, "something never asked", stream=True)
        assert time.monotonic() - began < 1.0, "an open breaker answers at once"
        assert refused.status_code == 503
        assert 25 <= int(refused.headers["Retry-After"]) <= 30
        assert refused.json()["error"]["code"] == "upstream_unavailable"
        sid = http.post(
            "/v1/sessions", json={"model": "deepseek-flash", "parameters": {"thinking": False}}
        ).json()["id"]
        answer = http.post(f"/v1/sessions/{sid}/messages", json={"content": "new question"})
        assert answer.status_code == 503


@pytest.mark.redis
def test_redis_away_is_a_503_and_service_returns_by_itself(
    gateway_factory: Callable[..., GatewayServer],
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        gateway = gateway_factory(redis=server.url, store=server.url, redis_namespace="away")
        with gateway.client() as http:
            sid = http.post(
                "/v1/sessions", json={"model": "deepseek-flash", "parameters": {"thinking": False}}
            ).json()["id"]
            first = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
            assert first.status_code == 200
            server.kill()
            began = time.monotonic()
            down = http.post(
                "/v1/sessions", json={"model": "deepseek-flash", "parameters": {"thinking": False}}
            )
            assert down.status_code == 503 and time.monotonic() - began < 5
            assert down.headers["Retry-After"] and "Redis" in down.json()["error"]["message"]
            assert http.get(f"/v1/sessions/{sid}").status_code == 503
            server.start()
            back = wait_until(lambda: http.get(f"/v1/sessions/{sid}").status_code == 200, 15)
            assert back
            stored = http.get(f"/v1/sessions/{sid}").json()
            assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
            again = http.post(f"/v1/sessions/{sid}/messages", json={"content": "more"})
            assert again.status_code == 200 and again.json()["status"] == "completed"
    finally:
        server.stop()


def test_session_answers_at_temperature_zero_come_from_the_cache(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    import orjson

    from tests.gateway.conftest import parse_sse

    gateway = gateway_factory()
    dones, texts = [], []
    with gateway.client() as http:
        for _ in range(2):
            body = {"model": "deepseek-flash", "parameters": {"temperature": 0, "thinking": False}}
            sid = http.post("/v1/sessions", json=body).json()["id"]
            reply = http.post(
                f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}
            )
            events = parse_sse(reply.text)
            texts.append("".join(orjson.loads(e["data"])["text"] for e in events
                                 if e.get("event") == "content"))  # fmt: skip
            dones.append(orjson.loads(next(e["data"] for e in events if e.get("event") == "done")))
            stored = http.get(f"/v1/sessions/{sid}").json()["messages"]
            assert stored[-1]["content"] == texts[-1]
        metrics = http.get("/metrics").text
    assert texts[0] == texts[1] and texts[0]
    assert "cached" not in dones[0] and dones[1]["cached"] is True
    assert dones[0]["usage"] == dones[1]["usage"]
    assert 'dskit_gateway_cache_total{result="hit"} 1.0' in metrics


@pytest.mark.redis
def test_tokens_per_minute_across_the_shared_bucket(
    gateway_factory: Callable[..., GatewayServer], redis_url: str, redis_prefix: str
) -> None:
    from dskit.gateway import RateLimit

    limit = RateLimit(rate=0.001, burst=80)
    one = gateway_factory(redis=redis_url, redis_namespace=redis_prefix, tokens_limit=limit)
    two = gateway_factory(redis=redis_url, redis_namespace=redis_prefix, tokens_limit=limit)
    question = "word " * 30  # about 50 tokens by the estimate
    with one.client() as first, two.client() as second:
        assert ask(first, question).status_code == 200
        refused = ask(second, question)
        assert refused.status_code == 429, "the other instance sees the same bucket"
        assert refused.json()["error"]["code"] == "tokens_rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        too_big = ask(second, "word " * 500)
        assert too_big.status_code == 429
        assert too_big.json()["error"]["code"] == "tokens_limit_exceeded"
        assert ask(first, "hi").status_code == 200, "a small request still fits"
