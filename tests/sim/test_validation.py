"""Bad input gets DeepSeek-shaped 4xx answers, never a 500; auth; the concurrency cap."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_until
from tests.sim.sim_helpers import AUTH, chat_body

MODELS_MSG = "The supported API model names are deepseek-flash, deepseek-v4-pro, but you passed "
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def error_of(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({**chat_body(), "model": "deepseek-nope"}, 400, MODELS_MSG + "deepseek-nope."),
        ({**chat_body(), "model": "deepseek-chat"}, 400, MODELS_MSG + "deepseek-chat."),
        ({**chat_body(), "model": "deepseek-reasoner"}, 400, MODELS_MSG + "deepseek-reasoner."),
        ({**chat_body(), "model": "deepseek-v4-flash"}, 200, ""),
        (chat_body(temperature=3), 400, "valid range of temperature is [0, 2]"),
        (chat_body(temperature=False), 422, "Failed to deserialize the JSON body"),
        (chat_body(top_p=1.5), 400, "top_p"),
        (chat_body(max_tokens=393216), 200, ""),
        (chat_body(max_tokens=393217), 400, "[1, 393216]"),
        (chat_body(n=2), 400, "Invalid n value (currently only n = 1 is supported)"),
        (
            chat_body(response_format={"type": "json_schema"}),
            400,
            "This response_format type is unavailable now",
        ),
        (chat_body(stream_options={"include_usage": True}), 400, "stream_options"),
        (chat_body(thinking=False), 422, "expected struct ThinkingOptions"),
        (chat_body(reasoning_effort="extreme"), 422, "reasoning_effort: unknown variant"),
        (chat_body(reasoning_effort="medium"), 200, ""),
        (
            {**chat_body(), "messages": [{"role": "developer", "content": "x"}]},
            422,
            "messages[0].role: unknown variant `developer`, expected one of `system`, `user`, "
            "`assistant`, `tool`, `latest_reminder`",
        ),
        (
            {
                **chat_body(),
                "messages": [
                    {"role": "latest_reminder", "content": "2026-12-03"},
                    {"role": "user", "content": "x"},
                ],
            },
            200,
            "",
        ),
        (
            {**chat_body(tool_choice="required", tools=[TOOL]), "thinking": {"type": "enabled"}},
            400,
            "Thinking mode does not support this tool_choice",
        ),
        (
            {
                **chat_body(tools=[TOOL]),
                "thinking": {"type": "enabled"},
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
            },
            400,
            "The `reasoning_content` in the thinking mode must be passed back to the API.",
        ),
        (
            {
                **chat_body(tools=[TOOL]),
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
            },
            200,
            "",
        ),  # thinking off: not needed
        ({**chat_body(logprobs=True, top_logprobs=21)}, 400, "top_logprobs"),
        (
            {"model": "deepseek-flash", "thinking": {"type": "disabled"}, "messages": []},
            400,
            "messages",
        ),
        (chat_body(stop=["a"] * 17), 400, "stop"),
        (chat_body(tool_choice={"type": "function", "function": {"name": "x"}}), 400, "tool"),
        (chat_body(temperature="hot"), 422, "Failed to deserialize the JSON body"),
        (chat_body(max_tokens=1.5), 422, "max_tokens"),
        (chat_body(stream="yes"), 422, "stream"),
        ({"messages": [{"role": "user", "content": "x"}]}, 422, "missing field `model`"),
        (
            {
                "model": "deepseek-flash",
                "thinking": {"type": "disabled"},
                "messages": [{"content": "x"}],
            },
            422,
            "missing field `role`",
        ),
        (
            {"model": "deepseek-flash", "thinking": {"type": "disabled"}, "messages": "hello"},
            422,
            "messages",
        ),
        ([1, 2, 3], 422, "expected struct"),
    ],
)
def test_validation_errors(client: httpx2.Client, body: Any, status: int, words: str) -> None:
    response = client.post("/chat/completions", json=body)
    if status == 200:
        assert response.status_code == 200
        return
    assert words in error_of(response, status)["message"]


def test_prefix_only_on_beta(client: httpx2.Client) -> None:
    messages = [
        {"role": "user", "content": "Write a poem"},
        {"role": "assistant", "content": "Roses", "prefix": True},
    ]
    body = {"model": "deepseek-flash", "thinking": {"type": "disabled"}, "messages": messages}
    assert "beta" in error_of(client.post("/chat/completions", json=body), 400)["message"]
    assert client.post("/beta/chat/completions", json=body).status_code == 200


def test_transport_level_errors(client: httpx2.Client, sim_factory: Any) -> None:
    bad_json = client.post(
        "/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert "Failed to parse the request body as JSON" in error_of(bad_json, 400)["message"]
    assert error_of(client.post("/chat/completions", content=b"{}"), 415)
    assert error_of(client.get("/nowhere"), 404)
    assert error_of(client.get("/chat/completions"), 405)
    assert error_of(client.post("/models"), 405)
    small = sim_factory(max_body_bytes=1000)
    with httpx2.Client(base_url=small.base_url, headers=AUTH) as http:
        big = chat_body("x" * 2000)
        assert "limit" in error_of(http.post("/chat/completions", json=big), 413)["message"]

        def body() -> Any:
            yield b'{"model": "deepseek-flash", "thinking": {"type": "disabled"}, '
            yield b'"messages": [{"role": "user", "content": "'
            yield b"y" * 1500
            yield b'"}]}'

        streamed = http.post(
            "/chat/completions", content=body(), headers={"content-type": "application/json"}
        )
        assert error_of(streamed, 413)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic c2stMTIz", "Bearer sk-wrong-key-9999"],
)
def test_auth_failures(sim_factory: Any, authorization: str | None) -> None:
    sim = sim_factory(api_keys=("sk-good-key-1234",))
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx2.Client(base_url=sim.base_url) as http:
        response = http.post("/chat/completions", json=chat_body(), headers=headers)
        error = error_of(response, 401)
        assert error["type"] == "authentication_error"
        assert error["code"] == "invalid_request_error"
        assert error["message"].startswith("Authentication Fails, Your api key: ****")
        if authorization == "Bearer sk-wrong-key-9999":
            assert error["message"] == "Authentication Fails, Your api key: ****9999 is invalid"
            assert "sk-wrong" not in response.text
        good = {"Authorization": "Bearer sk-good-key-1234"}
        assert http.post("/chat/completions", json=chat_body(), headers=good).status_code == 200
        assert http.get("/models").status_code == 401


def test_any_key_accepted_without_a_list(client: httpx2.Client) -> None:
    response = client.post(
        "/chat/completions", json=chat_body(), headers={"Authorization": "Bearer whatever"}
    )
    assert response.status_code == 200


def test_concurrency_cap(sim_factory: Any) -> None:
    sim = sim_factory(max_concurrency=2)
    body = chat_body("hold the line", stream=True)
    slow = {"X-Sim-Queue-Ms": "5000", "X-Sim-Keepalive-Ms": "20"}
    with httpx2.Client(base_url=sim.base_url, headers=AUTH, timeout=20) as http:
        streams = []
        for _ in range(2):
            context = http.stream("POST", "/chat/completions", json=body, headers=slow)
            response = context.__enter__()
            assert response.status_code == 200
            chunks = response.iter_raw()
            assert next(chunks) == b": keep-alive\n\n"  # the slot is taken
            streams.append((context, chunks))
        assert sim.app.active == 2
        refused = http.post("/chat/completions", json=body)
        error = error_of(refused, 429)
        assert "Rate Limit" in error["message"]
        assert sim.stats.rejected_concurrency == 1
        for context, _ in streams:
            context.__exit__(None, None, None)
    # closing the slow streams frees their slots: the server notices the disconnects
    wait_until(lambda: sim.app.active == 0)
    with httpx2.Client(base_url=sim.base_url, headers=AUTH, timeout=20) as http:
        assert http.post("/chat/completions", json=body).status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "response_format",
        "logprobs",
        "top_logprobs",
        "user_id",
        "frequency_penalty",
        "presence_penalty",
        "prompt",
        "suffix",
    ]
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system", "x"]) | JSON},
    optional={
        "content": JSON | st.text(max_size=30),
        "prefix": JSON,
        "tool_calls": JSON | st.lists(st.dictionaries(st.sampled_from(["id", "function"]), JSON)),
        "tool_call_id": JSON,
        "reasoning_content": JSON,
    },
)
BODIES = st.one_of(
    JSON,
    st.dictionaries(FIELDS, JSON, max_size=6),
    st.builds(
        lambda base, extra, messages: {**base, **extra, "messages": messages},
        st.just({"model": "deepseek-flash", "thinking": {"type": "disabled"}})
        | st.just({"model": "deepseek-flash"}),
        st.dictionaries(FIELDS.filter(lambda f: f != "messages"), JSON, max_size=4),
        st.lists(MESSAGE, min_size=1, max_size=4),
    ),
)
RAW = st.binary(max_size=200)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    body=BODIES,
    path=st.sampled_from(["/chat/completions", "/beta/chat/completions", "/beta/completions"]),
)
def test_junk_bodies_never_5xx(client: httpx2.Client, body: Any, path: str) -> None:
    try:
        content = json.dumps(body).encode()
    except ValueError:
        return
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=RAW)
def test_junk_bytes_never_5xx(client: httpx2.Client, raw: bytes) -> None:
    response = client.post(
        "/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"temperature": 2.5}, "valid range of temperature is [0, 2]"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 4097}, "[1, 4096]"),
        ({"stop": ["a"] * 17}, "at most 16"),
        ({"model": "deepseek-nope"}, "but you passed deepseek-nope."),
        ({"thinking": {"type": "enabled"}}, "not available in thinking mode"),
    ],
)
def test_fim_validation_errors(client: httpx2.Client, extra: dict[str, Any], words: str) -> None:
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "prompt": "def f():",
        **extra,
    }
    assert words in error_of(client.post("/beta/completions", json=body), 400)["message"]
