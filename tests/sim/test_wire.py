"""The wire format: chunk shapes of every kind, whole responses, determinism, endpoints."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2
import pytest

from tests.sim.sim_helpers import chat_body, joined, sse_chunks

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "minLength": 2},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "where": {
                        "type": "object",
                        "properties": {"lat": {"type": "number"}, "tags": {"type": "array"}},
                        "required": ["lat", "tags"],
                    },
                },
                "required": ["city", "unit", "days", "where"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"],
            },
        },
    },
]


def stream(client: httpx2.Client, body: dict[str, Any], path: str = "/chat/completions") -> Any:
    response = client.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    return response


def check_envelope(chunks: list[dict[str, Any]], model: str, usage_null: bool) -> None:
    ids = {c["id"] for c in chunks}
    created = {c["created"] for c in chunks}
    assert len(ids) == 1 and len(created) == 1
    for chunk in chunks[:-1]:
        assert list(chunk)[:6] == [
            "id",
            "object",
            "created",
            "model",
            "system_fingerprint",
            "choices",
        ]
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == model
        assert re.fullmatch(r"[0-9a-f]{32}", chunk["system_fingerprint"])  # the 2026 shape
        (choice,) = chunk["choices"]
        assert choice["index"] == 0 and choice["logprobs"] is None
        assert choice["finish_reason"] is None
        assert ("usage" in chunk) is usage_null
        if usage_null:
            assert chunk["usage"] is None
    last = chunks[-1]
    assert last["choices"][0]["delta"] == {"content": ""}
    assert last["choices"][0]["finish_reason"] is not None
    usage = last["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    hit, miss = usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"]
    assert hit + miss == usage["prompt_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": hit}


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_shape(client: httpx2.Client, include_usage: bool) -> None:
    body = chat_body("Tell me about rivers", stream_options={"include_usage": include_usage})
    response = stream(client, body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert len(response.headers["x-ds-trace-id"]) >= 16
    chunks = sse_chunks(response.content)
    check_envelope(chunks, "deepseek-flash", include_usage)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for chunk in chunks[1:-1]:
        delta = chunk["choices"][0]["delta"]
        assert list(delta) == ["content"] and delta["content"]
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == len(chunks) - 2
    assert 20 <= usage["completion_tokens"] <= 140
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_reasoner_stream_shape(client: httpx2.Client) -> None:
    body = {**chat_body("Why is the sky blue?"), "thinking": {"type": "enabled"}}
    chunks = sse_chunks(stream(client, body).content)
    check_envelope(chunks, "deepseek-flash", False)
    first = chunks[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": None, "reasoning_content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    kinds = ["r" if d["content"] is None else "c" for d in deltas]
    assert kinds == sorted(kinds, reverse=True)  # all reasoning first, then all content
    assert kinds.count("r") > 0 and kinds.count("c") > 0
    for delta in deltas:
        if delta["content"] is None:
            assert delta["reasoning_content"]
        else:
            assert delta["reasoning_content"] is None and delta["content"]
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == kinds.count("r")
    assert usage["completion_tokens"] == len(deltas)


def test_stream_and_whole_agree(client: httpx2.Client) -> None:
    body = {**chat_body("Same text either way"), "thinking": {"type": "enabled"}}
    chunks = sse_chunks(stream(client, body).content)
    whole = client.post("/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion"
    message = whole["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"] == joined(chunks)
    assert message["reasoning_content"] == joined(chunks, "reasoning_content")
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert whole["usage"]["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"]


def test_replies_are_deterministic_and_vary(client: httpx2.Client) -> None:
    def reply(text: str, **extra: Any) -> str:
        response = client.post("/chat/completions", json=chat_body(text, **extra))
        return str(response.json()["choices"][0]["message"]["content"])

    assert reply("first question") == reply("first question")
    assert reply("first question") != reply("second question")
    assert reply("first question") != reply("first question", temperature=0.2)
    lengths = {len(reply(f"question {n}").split()) for n in range(8)}
    assert len(lengths) > 3  # lengths vary per conversation


def test_chinese_when_user_writes_chinese(client: httpx2.Client) -> None:
    text = client.post("/chat/completions", json=chat_body("请介绍一下长江")).json()
    content = text["choices"][0]["message"]["content"]
    cjk = sum(1 for ch in content if "\u4e00" <= ch <= "\u9fff")
    assert cjk > len(content) / 2


def test_max_tokens_and_stop(client: httpx2.Client) -> None:
    full = sse_chunks(stream(client, chat_body("limits please")).content)
    text = joined(full)
    short = sse_chunks(stream(client, chat_body("limits please", max_tokens=5)).content)
    assert joined(short) == "".join(c["choices"][0]["delta"]["content"] for c in full[1:6])
    assert short[-1]["choices"][0]["finish_reason"] == "length"
    assert short[-1]["usage"]["completion_tokens"] == 5
    word = text.split()[3]
    stopped = client.post("/chat/completions", json=chat_body("limits please", stop=[word]))
    choice = stopped.json()["choices"][0]
    assert choice["message"]["content"] == text[: text.index(word)]
    assert choice["finish_reason"] == "stop"


def test_tool_call_stream(client: httpx2.Client) -> None:
    body = chat_body("Please use get_weather for Paris", tools=TOOLS)
    chunks = sse_chunks(stream(client, body).content)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    fragments = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:-1]]
    assert all(len(f) == 1 for f in fragments)
    head = fragments[0][0]
    assert head["index"] == 0 and head["id"].startswith("call_0_") and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert len(fragments) > 3
    for (fragment,) in fragments[1:]:
        assert set(fragment) == {"index", "function"} and list(fragment["function"]) == [
            "arguments"
        ]
    args = json.loads("".join(f[0]["function"]["arguments"] for f in fragments))
    assert set(args) >= {"city", "unit", "days", "where"}
    assert isinstance(args["city"], str) and len(args["city"]) >= 2
    assert args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["days"], int) and 1 <= args["days"] <= 7
    assert isinstance(args["where"]["lat"], float | int) and isinstance(args["where"]["tags"], list)


def test_parallel_tool_calls_and_choices(client: httpx2.Client) -> None:
    body = chat_body("Call get_time and then get weather for Oslo", tools=TOOLS)
    message = client.post("/chat/completions", json=body).json()["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_time", "get_weather"]
    assert [c["index"] for c in message["tool_calls"]] == [0, 1]
    plain = chat_body("Just chat with me", tools=TOOLS)
    auto = client.post("/chat/completions", json=plain).json()["choices"][0]
    assert auto["finish_reason"] == "stop" and "tool_calls" not in auto["message"]
    required = client.post("/chat/completions", json={**plain, "tool_choice": "required"})
    assert required.json()["choices"][0]["finish_reason"] == "tool_calls"
    named = {"type": "function", "function": {"name": "get_time"}}
    calls = client.post("/chat/completions", json={**plain, "tool_choice": named}).json()
    assert calls["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    none = client.post("/chat/completions", json={**body, "tool_choice": "none"}).json()
    assert none["choices"][0]["finish_reason"] == "stop"


def test_answer_uses_tool_results(client: httpx2.Client) -> None:
    call = {
        "id": "call_0_x",
        "type": "function",
        "function": {"name": "get_time", "arguments": "{}"},
    }
    messages = [
        {"role": "user", "content": "What time is it? use get_time"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0_x", "content": "It is 10:42 in Oslo"},
    ]
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": messages,
        "tools": TOOLS,
    }
    choice = client.post("/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "It is 10:42 in Oslo" in choice["message"]["content"]
    assert "get_time" in choice["message"]["content"]


def test_json_mode(client: httpx2.Client) -> None:
    body = chat_body("Give me JSON", response_format={"type": "json_object"})
    content = client.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)
    chunks = sse_chunks(stream(client, body).content)
    assert joined(chunks) == content
    assert len(chunks) > 10  # streamed in pieces


def test_fim(client: httpx2.Client) -> None:
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "prompt": "def add(a, b):\n",
        "suffix": "\n    return c",
    }
    whole = client.post("/beta/completions", json=body).json()
    assert whole["object"] == "text_completion"
    (choice,) = whole["choices"]
    assert choice["text"] and choice["finish_reason"] == "stop" and choice["index"] == 0
    chunks = sse_chunks(stream(client, body, "/beta/completions").content)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(chunks) - 1
    limited = client.post("/beta/completions", json={**body, "max_tokens": 3}).json()
    assert limited["choices"][0]["finish_reason"] == "length"
    too_many = client.post("/beta/completions", json={**body, "max_tokens": 4097})
    assert too_many.status_code == 400
    reasoner = client.post("/beta/completions", json={**body, "thinking": {"type": "enabled"}})
    assert reasoner.status_code == 400


def test_models_and_balance(client: httpx2.Client) -> None:
    for path in ("/models", "/v1/models"):
        models = client.get(path).json()
        assert models["object"] == "list"
        ids = [m["id"] for m in models["data"]]
        assert ids == ["deepseek-flash", "deepseek-v4-pro"]
        flash = models["data"][0]
        assert flash["context_window"] == 1048576 and flash["max_output_tokens"] == 393216
        assert flash["effort"] == {
            "supported_levels": ["low", "high", "max"],
            "default_level": "high",
        }
    balance = client.get("/user/balance").json()
    assert balance["is_available"] is True
    info = balance["balance_infos"][0]
    assert info["currency"] == "CNY" and isinstance(info["total_balance"], str)


def test_v1_path_serves_chat(client: httpx2.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
