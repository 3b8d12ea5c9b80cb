"""The Anthropic Messages surface: the real `anthropic` SDK and raw HTTP, over loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.sim.sim_helpers import KEY, named_events

PATH = "/anthropic/v1/messages"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def body(text: str = "Hello Claude", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


@pytest.fixture
def sdk(sim: Any) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(api_key=KEY, base_url=f"{sim.base_url}/anthropic", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def raw(sim: Any) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sim.base_url, headers=HEADERS, timeout=20) as http:
        yield http


def post(raw: httpx2.Client, data: dict[str, Any], **headers: str) -> httpx2.Response:
    return raw.post(PATH, json=data, headers=headers)


def unsigned(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The content blocks without the signature (the message's UUID, new every time)."""
    return [{k: v for k, v in b.items() if k != "signature"} for b in message["content"]]


def text_of(message: dict[str, Any]) -> str:
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


def test_sdk_message_has_thinking_with_signature_then_text(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(**body("A plain question for the sdk"))
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert text.type == "text" and text.text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.model == "deepseek-flash"
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


def test_sdk_stream_accumulates_to_the_same_message(sdk: anthropic.Anthropic) -> None:
    request = body("Stream and whole must agree", thinking={"type": "enabled"})
    whole = sdk.messages.create(**request)
    with sdk.messages.stream(**request) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed_text == whole.content[1].text  # type: ignore[union-attr]
    assert [b.model_dump() for b in final.content][1:] == [whole.content[1].model_dump()]
    assert final.content[0].thinking == whole.content[0].thinking  # type: ignore[union-attr]
    assert final.content[0].signature  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_raw_stream_event_sequence(raw: httpx2.Client) -> None:
    response = post(raw, body("The exact sequence", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" not in response.content
    events = named_events(response.content)
    names = [name for name, _ in events]
    thinking = names.index("content_block_stop")
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3 : thinking - 1]) == {"content_block_delta"}
    assert events[thinking - 1][1]["delta"]["type"] == "signature_delta"
    rest = names[thinking + 1 :]
    assert rest[0] == "content_block_start" and rest[-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert set(rest[1:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    kinds = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert kinds.count("signature_delta") == 1
    assert set(kinds) == {"thinking_delta", "signature_delta", "text_delta"}
    assert [d["index"] for n, d in events if n == "content_block_start"] == [0, 1]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == len(kinds) - 1  # one piece per delta
    whole = post(raw, body("The exact sequence")).json()
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == text_of(whole)


def test_thinking_disabled_has_no_thinking_block(raw: httpx2.Client) -> None:
    message = post(raw, body("no thoughts", thinking={"type": "disabled"})).json()
    assert [b["type"] for b in message["content"]] == ["text"]
    events = named_events(
        post(raw, body("no thoughts", thinking={"type": "disabled"}, stream=True)).content
    )
    assert [n for n, _ in events][:4] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ]
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}


def test_effort_from_output_config(raw: httpx2.Client) -> None:
    def thinking(effort: str) -> str:
        data = body("How long do you think?", output_config={"effort": effort})
        return str(post(raw, data).json()["content"][0]["thinking"])

    assert len(thinking("low").split()) < len(thinking("max").split())


@pytest.mark.parametrize(
    ("model", "served"),
    [
        ("claude-opus-4-1", "deepseek-v4-pro"),
        ("claude-opus-4-5-20251101", "deepseek-v4-pro"),
        ("claude-sonnet-4-5", "deepseek-flash"),
        ("claude-3-5-haiku-latest", "deepseek-flash"),
        ("deepseek-v4-pro", "deepseek-v4-pro"),
        ("deepseek-flash", "deepseek-flash"),
    ],
)
def test_model_mapping(raw: httpx2.Client, model: str, served: str) -> None:
    response = post(raw, body(model=model, max_tokens=5))
    assert response.status_code == 200
    assert response.json()["model"] == served


def test_unknown_model_is_400_in_anthropic_shape(raw: httpx2.Client) -> None:
    response = post(raw, body(model="gpt-4o"))
    assert response.status_code == 400
    data = response.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert "you passed gpt-4o" in data["error"]["message"]


def test_sdk_tool_use_round_trip(sdk: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "Please call get_weather for me"}
    first = sdk.messages.create(
        model="claude-sonnet-4-5", max_tokens=2048, messages=[question], tools=[WEATHER]
    )  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    use = first.content[1]
    assert use.type == "tool_use" and use.name == "get_weather"
    assert isinstance(use.input, dict) and set(use.input) >= {"city", "days"}
    assert use.input["days"] >= 1
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}
    history = [
        question,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [result]},
    ]
    second = sdk.messages.create(
        model="claude-sonnet-4-5", max_tokens=2048, messages=history, tools=[WEATHER]
    )  # type: ignore[arg-type]
    assert second.stop_reason == "end_turn"
    answer = second.content[-1]
    assert answer.type == "text" and "get_weather returned: sunny, 21 C" in answer.text


def test_streamed_tool_use_input_json_deltas(raw: httpx2.Client) -> None:
    data = body("get_weather now", tools=[WEATHER], thinking={"type": "disabled"})
    whole = post(raw, data).json()
    events = named_events(post(raw, {**data, "stream": True}).content)
    start = next(d for n, d in events if n == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    assert start["content_block"]["id"] == whole["content"][0]["id"]
    parts = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert json.loads("".join(parts)) == whole["content"][0]["input"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_tool_history_without_thinking_is_refused(raw: httpx2.Client) -> None:
    history = [
        {"role": "user", "content": "get_weather please"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}],
        },
    ]
    response = post(raw, {**body(), "messages": history, "tools": [WEATHER]})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "The `content[].thinking` in the thinking mode must be passed back to the API."
    )
    disabled = post(
        raw, {**body(), "messages": history, "tools": [WEATHER], "thinking": {"type": "disabled"}}
    )
    assert disabled.status_code == 200
    assert "get_weather returned: rain" in text_of(disabled.json())


@pytest.mark.parametrize(
    ("choice", "status"),
    [
        ({"type": "tool", "name": "get_weather"}, 400),
        ({"type": "any"}, 400),
        ({"type": "auto"}, 200),
    ],
)
def test_forced_tool_choice_needs_thinking_off(
    raw: httpx2.Client, choice: Any, status: int
) -> None:
    data = body("what is up", tools=[WEATHER], tool_choice=choice)
    response = post(raw, data)
    assert response.status_code == status
    if status == 400:
        assert (
            response.json()["error"]["message"] == "Thinking mode does not support this tool_choice"
        )
        forced = post(raw, {**data, "thinking": {"type": "disabled"}}).json()
        assert forced["stop_reason"] == "tool_use"
        assert forced["content"][0]["name"] == "get_weather"


def test_tool_choice_none_answers_in_text(raw: httpx2.Client) -> None:
    message = post(
        raw, body("get_weather please", tools=[WEATHER], tool_choice={"type": "none"})
    ).json()
    assert message["stop_reason"] == "end_turn"
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]


def test_stop_sequences(raw: httpx2.Client) -> None:
    plain = text_of(post(raw, body("Where should it stop?")).json())
    word = plain.split()[len(plain.split()) // 2]
    stop = " " + word
    cut = plain[: plain.index(stop)]
    message = post(raw, body("Where should it stop?", stop_sequences=["zzz-never", stop])).json()
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == stop
    assert text_of(message) == cut
    events = named_events(
        post(raw, body("Where should it stop?", stop_sequences=[stop], stream=True)).content
    )
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}
    never = post(raw, body("Where should it stop?", stop_sequences=["zzz-never"])).json()
    assert never["stop_reason"] == "end_turn" and never["stop_sequence"] is None


def test_max_tokens(raw: httpx2.Client) -> None:
    message = post(raw, body("cut me short", max_tokens=7)).json()
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] == 7


def test_system_as_string_or_blocks(raw: httpx2.Client) -> None:
    as_string = text_of(post(raw, body("sys test", system="Be brief.")).json())
    blocks = [
        {"type": "text", "text": "Be ", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "brief."},
    ]
    assert text_of(post(raw, body("sys test", system=blocks)).json()) == as_string
    assert text_of(post(raw, body("sys test")).json()) != as_string


def test_count_tokens_matches_usage(raw: httpx2.Client) -> None:
    data = body("Count me " * 40, system="You count.")
    counted = raw.post(
        f"{PATH}/count_tokens", json={k: v for k, v in data.items() if k != "max_tokens"}
    )
    assert counted.status_code == 200 and set(counted.json()) == {"input_tokens"}
    tokens = counted.json()["input_tokens"]
    first = post(raw, data).json()["usage"]
    assert first["input_tokens"] == tokens and first["cache_read_input_tokens"] == 0
    again = post(raw, data).json()["usage"]  # the same prompt again: read from the cache
    assert again["cache_read_input_tokens"] > 0
    assert again["input_tokens"] + again["cache_read_input_tokens"] == tokens


def test_short_path_and_bearer(sim: Any) -> None:
    with httpx2.Client(base_url=sim.base_url, timeout=20) as http:
        response = http.post(
            "/anthropic/messages", json=body(), headers={"Authorization": f"Bearer {KEY}"}
        )
    assert response.status_code == 200 and response.json()["type"] == "message"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-api-key": "sk-good"}, 200),
        ({"Authorization": "Bearer sk-good"}, 200),
        ({"Authorization": "Bearer sk-good", "x-api-key": "sk-bad1"}, 200),  # Bearer wins
        ({"Authorization": "Bearer sk-bad2", "x-api-key": "sk-good"}, 401),
        ({"x-api-key": "sk-bad3"}, 401),
        ({}, 401),
    ],
)
def test_auth(sim_factory: Any, headers: dict[str, str], status: int) -> None:
    server = sim_factory(api_keys=("sk-good",))
    with httpx2.Client(base_url=server.base_url, timeout=20) as http:
        response = http.post(PATH, json=body(), headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == "authentication_error"


def test_sdk_authentication_error(sim_factory: Any) -> None:
    server = sim_factory(api_keys=("sk-good",))
    url = f"{server.base_url}/anthropic"
    with anthropic.Anthropic(api_key="sk-wrong", base_url=url, max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            client.messages.create(**body())
    assert caught.value.status_code == 401


def ignored_rows() -> list[Any]:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
    }
    del image  # images are supported (a placeholder in the prompt), not ignored
    return [
        pytest.param({"top_k": 5}, {}, id="top_k"),
        pytest.param({"container": "c1"}, {}, id="container"),
        pytest.param(
            {"mcp_servers": [{"type": "url", "url": "https://x", "name": "m"}]},
            {},
            id="mcp_servers",
        ),
        pytest.param({"service_tier": "auto"}, {}, id="service_tier"),
        pytest.param({"metadata": {"user_id": "u-1", "other": "x"}}, {}, id="metadata"),
        pytest.param(
            {"thinking": {"type": "enabled", "budget_tokens": 2048}}, {}, id="budget_tokens"
        ),
        pytest.param(
            {"output_config": {"effort": "high", "format": {"type": "json_schema"}}},
            {},
            id="output_config",
        ),
        pytest.param(
            {}, {"anthropic-beta": "interleaved-thinking-2025-05-14"}, id="anthropic-beta"
        ),
        pytest.param({}, {"anthropic-version": "2099-01-01"}, id="anthropic-version"),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "text",
                                "text": "ignored fields",
                                "cache_control": {"type": "ephemeral"},
                                "citations": [],
                            }
                        ],
                    }
                ]
            },
            {},
            id="text_cache_control_citations",
        ),
        pytest.param(
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            {},
            id="web_search_tool",
        ),
    ]


@pytest.mark.parametrize(("extra", "headers"), ignored_rows())
def test_ignored_fields_change_nothing(
    raw: httpx2.Client, extra: dict[str, Any], headers: dict[str, str]
) -> None:
    baseline = post(raw, body("ignored fields")).json()
    response = post(raw, {**body("ignored fields"), **extra}, **headers)
    assert response.status_code == 200, response.text
    assert unsigned(response.json()) == unsigned(baseline)


def test_ignored_tool_fields(raw: httpx2.Client) -> None:
    tool = {**WEATHER, "cache_control": {"type": "ephemeral"}}
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    baseline = post(raw, body("get_weather", tools=[WEATHER])).json()
    message = post(raw, body("get_weather", tools=[tool], tool_choice=choice)).json()
    assert message["content"][1]["input"] == baseline["content"][1]["input"]
    result = {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [{"type": "text", "text": "boom"}],
        "is_error": True,
    }
    history = [
        {"role": "user", "content": "get_weather"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}],
        },
        {"role": "user", "content": [result]},
    ]
    answered = post(raw, {**body(), "messages": history, "thinking": {"type": "disabled"}}).json()
    assert "get_weather returned: boom" in text_of(answered)


def test_image_blocks_are_accepted(raw: httpx2.Client) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
    }
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    content = [image, url, {"type": "text", "text": "what is this"}]
    assert (
        post(raw, {**body(), "messages": [{"role": "user", "content": content}]}).status_code == 200
    )
    file = {"type": "image", "source": {"type": "file", "file_id": "file-api-1"}}
    data = {**body(), "messages": [{"role": "user", "content": [file]}]}
    assert post(raw, data, **{"anthropic-beta": "files-api-2025-04-14"}).status_code == 200


def _user_blocks(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        pytest.param(
            _user_blocks({"type": "document", "source": {"type": "text", "data": "x"}}),
            "`document` is not supported",
            id="document",
        ),
        pytest.param(
            _user_blocks({"type": "search_result", "source": "s", "title": "t", "content": []}),
            "`search_result` is not supported",
            id="search_result",
        ),
        pytest.param(
            _user_blocks({"type": "container_upload", "file_id": "f"}),
            "`container_upload` is not supported",
            id="container_upload",
        ),
        pytest.param(
            _user_blocks({"type": "mcp_tool_result", "tool_use_id": "m"}),
            "`mcp_tool_result` is not supported",
            id="mcp_tool_result",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
                    {"role": "user", "content": "q"},
                ]
            },
            "`redacted_thinking` is not supported",
            id="redacted_thinking",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "mcp_tool_use",
                                "id": "m",
                                "name": "n",
                                "server_name": "s",
                                "input": {},
                            }
                        ],
                    },
                ]
            },
            "`mcp_tool_use` is not supported",
            id="mcp_tool_use",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "code_execution_tool_result",
                                "tool_use_id": "c",
                                "content": {},
                            }
                        ],
                    },
                ]
            },
            "`code_execution_tool_result` is not supported",
            id="code_execution_tool_result",
        ),
        pytest.param(
            _user_blocks({"type": "image", "source": {"type": "file", "file_id": "f"}}),
            "anthropic-beta",
            id="file_image_without_beta",
        ),
        pytest.param(
            {"tools": [{"type": "bash_20250124", "name": "bash"}]},
            "tool type `bash_20250124`",
            id="other_tool_type",
        ),
        pytest.param(
            {"tools": [{"name": "no_schema"}]},
            "input_schema: Field required",
            id="tool_without_schema",
        ),
        pytest.param({"max_tokens": None}, "max_tokens: Field required", id="no_max_tokens"),
        pytest.param({"thinking": {"type": "adaptive"}}, "thinking.type", id="thinking_type"),
        pytest.param(
            {"messages": [{"role": "system", "content": "x"}]},
            "expected `user` or `assistant`",
            id="system_role",
        ),
        pytest.param({"temperature": 2.5}, "temperature", id="temperature_range"),
        pytest.param({"output_config": {"effort": "huge"}}, "unknown variant", id="bad_effort"),
        pytest.param({"max_tokens": 10**7}, "max_tokens", id="max_tokens_range"),
    ],
)
def test_refused(raw: httpx2.Client, extra: dict[str, Any], fragment: str) -> None:
    data = {**body(), **extra}
    data = {k: v for k, v in data.items() if v is not None}
    response = post(raw, data)
    assert response.status_code == 400, response.text
    error = response.json()
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


@pytest.mark.parametrize(
    ("status", "kind", "exception"),
    [
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.APIStatusError),
    ],
)
def test_status_fault(
    sdk: anthropic.Anthropic, status: int, kind: str, exception: type[Exception]
) -> None:
    with pytest.raises(exception) as caught:
        sdk.messages.create(**body(), extra_headers={"X-Sim-Status": str(status)})
    error = caught.value
    assert isinstance(error, anthropic.APIStatusError) and error.status_code == status
    assert error.body == {
        "type": "error",
        "error": {"type": kind, "message": error.body["error"]["message"]},
    }  # type: ignore[index]


def test_dropped_stream(raw: httpx2.Client, sdk: anthropic.Anthropic) -> None:
    received = bytearray()
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        raw.stream(
            "POST", PATH, json=body(stream=True), headers={"X-Sim-Drop-After-Events": "5"}
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    assert [n for n, _ in named_events(bytes(received))] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
    ]
    with pytest.raises(httpx2.RemoteProtocolError):  # the SDK sees the broken transfer
        with sdk.messages.stream(
            **body(), extra_headers={"X-Sim-Drop-After-Events": "5"}
        ) as stream:
            stream.get_final_message()


def test_no_done_drops_message_stop(raw: httpx2.Client) -> None:
    events = named_events(post(raw, body(stream=True), **{"X-Sim-No-Done": "1"}).content)
    assert events[-1][0] == "message_delta"


def test_insufficient_after_events(raw: httpx2.Client) -> None:
    message = post(raw, body(), **{"X-Sim-Insufficient-After-Events": "3"}).json()
    assert message["stop_reason"] == "insufficient_system_resource"
    assert message["usage"]["output_tokens"] == 3


def test_unknown_anthropic_path_is_404_in_anthropic_shape(raw: httpx2.Client) -> None:
    response = raw.post("/anthropic/v1/complete", json={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert raw.get(PATH).json()["type"] == "error"  # 405, also Anthropic's shape
