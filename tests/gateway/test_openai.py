"""The `openai` package, unchanged, against the gateway: plain, streaming, tools, queueing."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest

from tests.gateway.conftest import GatewayServer

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about rivers."}]


def _openai(gateway: GatewayServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="sk-anything", max_retries=0, **kwargs
    )


def _direct(sim: Any, **params: Any) -> Any:
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": MESSAGES,
        **params,
    }
    response = httpx2.post(
        f"{sim.base_url}/chat/completions", json=body,
        headers={"Authorization": "Bearer sk-x"}, timeout=30,
    )  # fmt: skip
    return response.json()


def test_plain_completion_matches_the_upstream(gateway: GatewayServer, sim: Any) -> None:
    with _openai(gateway) as client:
        completion = client.chat.completions.create(
            model="deepseek-flash", extra_body={"thinking": {"type": "disabled"}}, messages=MESSAGES
        )
    direct = _direct(sim)
    assert completion.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_streaming_gives_the_same_text(gateway: GatewayServer, sim: Any) -> None:
    with _openai(gateway) as client:
        stream = client.chat.completions.create(
            model="deepseek-flash", extra_body={"thinking": {"type": "disabled"}},
            messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _direct(sim)["choices"][0]["message"]["content"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_stream_wire_format_is_plain_data_lines(gateway: GatewayServer) -> None:
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": MESSAGES,
        "stream": True,
    }
    with gateway.client() as http:
        raw = http.post("/v1/chat/completions", json=body).text
    assert "\r" not in raw
    blocks = [b for b in raw.split("\n\n") if b]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    assert blocks[-1] == "data: [DONE]"


def test_tools_stream_and_parse(gateway: GatewayServer) -> None:
    tools: Any = [{
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }]  # fmt: skip
    ask: Any = [{"role": "user", "content": "Use get_weather for Paris."}]
    with _openai(gateway) as client:
        plain = client.chat.completions.create(
            model="deepseek-flash",
            extra_body={"thinking": {"type": "disabled"}},
            messages=ask,
            tools=tools,
            tool_choice="required",
        )
        stream = client.chat.completions.create(
            model="deepseek-flash",
            extra_body={"thinking": {"type": "disabled"}},
            messages=ask,
            tools=tools,
            tool_choice="required",
            stream=True,
        )
        fragments = [c.choices[0].delta.tool_calls for c in stream if c.choices]
    call = plain.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert plain.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    parts = [f[0] for f in fragments if f]
    assert parts[0].id == call.id and parts[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "".join(p.function.arguments or "" for p in parts) == call.function.arguments  # type: ignore[union-attr]


def test_openai_stream_survives_queue_heartbeats(gateway: GatewayServer, sim: Any) -> None:
    headers = {"X-Sim-Queue-Ms": "600", "X-Sim-Keepalive-Ms": "50"}
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": MESSAGES,
        "stream": True,
    }
    with gateway.client() as http:
        raw = http.post("/v1/chat/completions", json=body, headers=headers).text
    assert raw.count(": keep-alive\n\n") >= 3
    with _openai(gateway, default_headers=headers) as client:
        chunks = list(
            client.chat.completions.create(
                model="deepseek-flash",
                extra_body={"thinking": {"type": "disabled"}},
                messages=MESSAGES,
                stream=True,
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _direct(sim)["choices"][0]["message"]["content"]


def test_models_list(gateway: GatewayServer) -> None:
    with _openai(gateway) as client:
        ids = [m.id for m in client.models.list()]
    assert {"deepseek-flash", "deepseek-v4-pro"} <= set(ids)


@pytest.mark.parametrize(
    ("headers", "status", "error_class"),
    [
        ({"X-Sim-Status": "429", "X-Sim-Retry-After": "0"}, 429, openai.RateLimitError),
        ({"X-Sim-Status": "400"}, 400, openai.BadRequestError),
        ({"X-Sim-Status": "401"}, 502, openai.InternalServerError),
    ],
)
def test_upstream_errors_map_to_statuses(
    gateway_factory: Any, headers: dict[str, str], status: int, error_class: type[Exception]
) -> None:
    gateway = gateway_factory(upstream_max_retries=0)
    with _openai(gateway, default_headers=headers) as client, pytest.raises(error_class) as info:
        client.chat.completions.create(
            model="deepseek-flash",
            extra_body={"thinking": {"type": "disabled"}},
            messages=MESSAGES,
            stream=True,
        )
    assert getattr(info.value, "status_code", None) == status
    assert "sk-test-upstream" not in str(info.value)


def test_broken_upstream_stream_is_resumed_seamlessly(gateway: GatewayServer, sim: Any) -> None:
    headers = {"X-Sim-Drop-After-Events": "5", "X-Sim-Fault-Key": "drop-once-relay"}
    with _openai(gateway, default_headers=headers) as client:
        chunks = list(
            client.chat.completions.create(
                model="deepseek-flash",
                extra_body={"thinking": {"type": "disabled"}},
                messages=MESSAGES,
                stream=True,
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _direct(sim)["choices"][0]["message"]["content"]
    with gateway.client() as http:
        metrics = http.get("/metrics").text
    assert "dskit_gateway_upstream_resumes_total 1.0" in metrics


def test_a_resumed_relay_is_one_completion(gateway_factory: Any, sim_factory: Any) -> None:
    """Chunks passed on as the upstream sent them (reads of one chunk each, as from a
    real server), then a resume encoded by the relay: the client sees one id, model and
    fingerprint, one role, every token once, one end."""
    sim = sim_factory(token_ms=2)
    gateway = gateway_factory(upstream=sim.base_url)
    headers = {"X-Sim-Drop-After-Events": "12", "X-Sim-Fault-Key": "drop-once-passed-on"}
    with _openai(gateway, default_headers=headers) as client:
        options: Any = {"include_usage": True}
        stream = client.chat.completions.create(
            model="deepseek-flash",
            extra_body={"thinking": {"type": "disabled"}},
            messages=MESSAGES,
            stream=True,
            stream_options=options,
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _direct(sim)["choices"][0]["message"]["content"]
    assert len({c.id for c in chunks}) == 1 and len({c.model for c in chunks}) == 1
    assert len({c.system_fingerprint for c in chunks}) == 1
    assert [c.choices[0].delta.role for c in chunks if c.choices[0].delta.role] == ["assistant"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    with gateway.client() as http:
        assert "dskit_gateway_upstream_resumes_total 1.0" in http.get("/metrics").text


def test_client_leaving_a_relay_closes_the_upstream_request(
    gateway_factory: Any, sim_factory: Any
) -> None:
    from tests.conftest import wait_until

    sim = sim_factory(token_ms=30)
    gateway = gateway_factory(upstream=sim.base_url)
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": MESSAGES,
        "stream": True,
    }
    with gateway.client() as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert sim.app._tasks, "the upstream request should be open"
        wait_until(lambda: not sim.app._tasks, timeout=10)
        wait_until(lambda: "dskit_gateway_active_streams 0.0" in http.get("/metrics").text)


def test_relays_in_a_row_reuse_one_upstream_connection(
    gateway_factory: Any, sim_factory: Any, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """A relay hands its upstream connection back for the next request: one kept-alive
    connection serves streams one after another (a new one per stream costs a connect
    and the upstream's accept on every first token)."""
    from tests.conftest import wait_until

    gateway = gateway_factory(upstream=sim_factory(token_ms=1).base_url)
    pool = gateway.gw.client._http
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 8,
    }
    with gateway.client() as http:
        for _ in range(4):
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert "data: [DONE]" in list(response.iter_lines())
            wait_until(lambda: pool.idle == 1, timeout=10)
            assert pool.connections == 1


@pytest.mark.parametrize("text", ["plain", 'quotes " and \\ and\nnewlines', "émoji 🌊", ""])
def test_content_chunk_bytes_are_the_general_delta_encoding(text: str) -> None:
    from dskit.gateway.wire._relay import ChunkEncoder

    encoder = ChunkEncoder("deepseek-chat")
    first = encoder.content(text)  # the first delta carries the role
    assert orjson.loads(first[6:])["choices"][0]["delta"] == {"role": "assistant", "content": text}
    assert encoder.content(text) == encoder.delta({"content": text})
    chunk = orjson.loads(encoder.content(text).removeprefix(b"data: "))
    assert chunk["id"] == encoder.id and chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"] == [
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    ]
