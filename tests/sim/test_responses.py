"""The OpenAI Responses surface: the real `openai` SDK and raw HTTP, over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import jsonschema_rs
import pytest
from openai import APIConnectionError, OpenAI, RateLimitError

from tests.sim.sim_helpers import AUTH, KEY, named_events

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 3},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1},
        "nested": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    },
    "required": ["title", "rating", "tags", "nested"],
    "additionalProperties": False,
}


def body(prompt: Any = "Hello responses", **extra: Any) -> dict[str, Any]:
    return {"model": "deepseek-flash", "input": prompt, **extra}


@pytest.fixture
def sdk(sim: Any) -> Iterator[OpenAI]:
    client = OpenAI(api_key=KEY, base_url=sim.base_url, max_retries=0)
    yield client
    client.close()


@pytest.fixture
def raw(sim: Any) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sim.base_url, headers=AUTH, timeout=20) as http:
        yield http


def post(raw: httpx2.Client, data: dict[str, Any], **headers: str) -> httpx2.Response:
    return raw.post("/responses", json=data, headers=headers)


def output_text(response: dict[str, Any]) -> str:
    parts = [p for o in response["output"] if o["type"] == "message" for p in o["content"]]
    return "".join(p["text"] for p in parts)


def test_sdk_response_object(sdk: OpenAI) -> None:
    response = sdk.responses.create(
        model="deepseek-flash", input="A question", instructions="Be kind."
    )
    assert response.object == "response" and response.status == "completed"
    assert [o.type for o in response.output] == ["reasoning", "message"]
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content and reasoning.content[0].text
    assert reasoning.summary == [] and reasoning.encrypted_content
    assert message.type == "message" and response.output_text
    assert response.instructions == "Be kind." and response.model == "deepseek-flash"
    assert response.store is False and response.parallel_tool_calls is True
    usage = response.usage
    assert usage is not None and usage.output_tokens_details.reasoning_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0


def test_cached_tokens_on_a_repeated_prompt(raw: httpx2.Client) -> None:
    data = body("Cache this prompt please " * 30)
    first = post(raw, data).json()["usage"]
    again = post(raw, data).json()["usage"]
    assert first["input_tokens_details"]["cached_tokens"] == 0
    assert again["input_tokens"] == first["input_tokens"]
    assert 0 < again["input_tokens_details"]["cached_tokens"] <= again["input_tokens"]


def test_sdk_stream_matches_whole(sdk: OpenAI) -> None:
    whole = sdk.responses.create(model="deepseek-flash", input="stream vs whole")
    events = list(
        sdk.responses.create(model="deepseek-flash", input="stream vs whole", stream=True)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == whole.output_text
    usage, first = final.response.usage, whole.usage
    assert (usage.input_tokens, usage.output_tokens) == (first.input_tokens, first.output_tokens)
    assert usage.input_tokens_details.cached_tokens > 0  # the same prompt again: a cache hit


def test_raw_event_sequence(raw: httpx2.Client) -> None:
    response = post(raw, body("the sequence", stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" not in response.content
    events = named_events(response.content)
    names = [n for n, _ in events]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    reasoning_end = names.index("response.output_item.done")
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(names[4 : reasoning_end - 2]) == {"response.reasoning_text.delta"}
    assert names[reasoning_end - 2 : reasoning_end] == [
        "response.reasoning_text.done",
        "response.content_part.done",
    ]
    rest = names[reasoning_end + 1 :]
    assert rest[:2] == ["response.output_item.added", "response.content_part.added"]
    assert set(rest[2:-4]) == {"response.output_text.delta"}
    assert rest[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = events[0][1]["response"]
    assert (
        created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    )
    assert (
        events[2][1]["item"]["type"] == "reasoning"
        and events[2][1]["item"]["status"] == "in_progress"
    )
    item_ids = {d["item_id"] for n, d in events if n.endswith(".delta")}
    assert item_ids == {o["id"] for o in events[-1][1]["response"]["output"]}
    done_text = next(d["text"] for n, d in events if n == "response.output_text.done")
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert deltas == done_text == output_text(events[-1][1]["response"])


def test_sdk_function_call_round_trip(sdk: OpenAI) -> None:
    first = sdk.responses.create(
        model="deepseek-flash", input="Please call get_weather", tools=[WEATHER]
    )  # type: ignore[list-item]
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    arguments = json.loads(call.arguments)
    assert set(arguments) >= {"city", "days"} and arguments["days"] >= 1
    history = [
        {"role": "user", "content": "Please call get_weather"},
        *[o.model_dump(exclude_none=True) for o in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    second = sdk.responses.create(model="deepseek-flash", input=history, tools=[WEATHER])  # type: ignore[arg-type]
    assert second.status == "completed"
    assert "get_weather returned: sunny, 21 C" in second.output_text


def test_streamed_function_call_arguments(raw: httpx2.Client) -> None:
    data = body("get_weather now", tools=[WEATHER], reasoning={"effort": "none"})
    whole = post(raw, data).json()
    assert [o["type"] for o in whole["output"]] == ["function_call"]
    events = named_events(post(raw, {**data, "stream": True}).content)
    parts = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta"]
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert "".join(parts) == done["arguments"] == whole["output"][0]["arguments"]
    added = next(d for n, d in events if n == "response.output_item.added")
    assert (
        added["item"]["arguments"] == ""
        and added["item"]["call_id"] == whole["output"][0]["call_id"]
    )


def test_history_without_reasoning_is_refused_with_tools(raw: httpx2.Client) -> None:
    history = [
        {"role": "user", "content": "get_weather"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "rain"},
    ]
    response = post(raw, body(history, tools=[WEATHER]))
    assert response.status_code == 400
    assert "must be passed back" in response.json()["error"]["message"]
    passed = [
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]}
    ]
    fixed = post(raw, body([history[0], *passed, *history[1:]], tools=[WEATHER]))
    assert fixed.status_code == 200 and "get_weather returned: rain" in output_text(fixed.json())


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output(raw: httpx2.Client, stream: bool) -> None:
    fmt = {"format": {"type": "json_schema", "name": "review", "schema": SCHEMA, "strict": True}}
    data = body("Review this", text=fmt, stream=stream)
    response = post(raw, data)
    if stream:
        events = named_events(response.content)
        text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    else:
        text = output_text(response.json())
    value = json.loads(text)
    jsonschema_rs.validate(SCHEMA, value)
    assert output_text(post(raw, {**data, "stream": False}).json()) == text  # deterministic
    other = output_text(post(raw, {**data, "input": "Another one", "stream": False}).json())
    jsonschema_rs.validate(SCHEMA, json.loads(other))


def test_json_schema_after_a_tool_result(raw: httpx2.Client) -> None:
    fmt = {"format": {"type": "json_schema", "name": "r", "schema": SCHEMA}}
    history = [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "rain"},
    ]
    data = body(history, text=fmt, reasoning={"effort": "none"})
    jsonschema_rs.validate(SCHEMA, json.loads(output_text(post(raw, data).json())))


def test_json_object_output(raw: httpx2.Client) -> None:
    response = post(raw, body("json please", text={"format": {"type": "json_object"}}))
    assert isinstance(json.loads(output_text(response.json())), dict)


def test_sdk_json_schema_through_text_format(sdk: OpenAI) -> None:
    response = sdk.responses.create(
        model="deepseek-flash",
        input="structured",
        text={"format": {"type": "json_schema", "name": "review", "schema": SCHEMA}},
    )
    jsonschema_rs.validate(SCHEMA, json.loads(response.output_text))


def test_reasoning_effort(raw: httpx2.Client) -> None:
    def reasoning(effort: str) -> list[dict[str, Any]]:
        out = post(raw, body("think about it", reasoning={"effort": effort})).json()["output"]
        return [o for o in out if o["type"] == "reasoning"]

    assert reasoning("none") == []
    low = reasoning("low")[0]["content"][0]["text"]
    high = reasoning("max")[0]["content"][0]["text"]
    assert len(low.split()) < len(high.split())


def test_max_output_tokens_makes_it_incomplete(raw: httpx2.Client) -> None:
    response = post(raw, body("cut", max_output_tokens=8)).json()
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["usage"]["output_tokens"] == 8
    events = named_events(post(raw, body("cut", max_output_tokens=8, stream=True)).content)
    assert events[-1][0] == "response.incomplete"


def test_input_items_and_roles(raw: httpx2.Client) -> None:
    plain = output_text(post(raw, body("same question", instructions="sys")).json())
    items = [
        {"role": "system", "content": "sys"},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "same question"}],
        },
    ]
    assert output_text(post(raw, body(items)).json()) == plain
    developer = [{"role": "developer", "content": "same question"}]
    user = [{"role": "user", "content": "same question"}]
    assert output_text(post(raw, body(developer)).json()) == output_text(
        post(raw, body(user)).json()
    )
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    with_image = [{"role": "user", "content": [image, {"type": "input_text", "text": "what"}]}]
    assert post(raw, body(with_image)).status_code == 200
    only_instructions = post(raw, {"model": "deepseek-flash", "instructions": "talk"})
    assert only_instructions.status_code == 200 and output_text(only_instructions.json())


def ignored_rows() -> list[Any]:
    return [
        pytest.param({"store": True}, id="store"),
        pytest.param({"metadata": {"k": "v"}}, id="metadata"),
        pytest.param({"include": ["reasoning.encrypted_content"]}, id="include"),
        pytest.param({"prompt": {"id": "pmpt_1"}}, id="prompt"),
        pytest.param({"truncation": "auto"}, id="truncation"),
        pytest.param({"service_tier": "flex"}, id="service_tier"),
        pytest.param({"safety_identifier": "s1"}, id="safety_identifier"),
        pytest.param({"prompt_cache_key": "k"}, id="prompt_cache_key"),
        pytest.param({"prompt_cache_retention": "24h"}, id="prompt_cache_retention"),
        pytest.param({"context_management": [{"type": "compaction"}]}, id="context_management"),
        pytest.param({"parallel_tool_calls": False, "max_tool_calls": 1}, id="parallel_tool_calls"),
        pytest.param({"reasoning": {"effort": "high", "summary": "auto"}}, id="reasoning_summary"),
        pytest.param({"text": {"format": {"type": "text"}, "verbosity": "low"}}, id="verbosity"),
        pytest.param({"user": "someone@example.com"}, id="user"),
        pytest.param({"top_logprobs": 5}, id="top_logprobs"),
        pytest.param(
            {
                "tools": [
                    {"type": "web_search"},
                    {"type": "file_search", "vector_store_ids": []},
                    {"type": "code_interpreter", "container": {"type": "auto"}},
                    {"type": "mcp", "server_label": "m"},
                    {"type": "custom", "name": "apply_patch"},
                ]
            },
            id="builtin_tools",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "user", "content": "ignored fields"},
                    {"type": "web_search_call", "id": "ws1", "status": "completed"},
                    {"type": "item_reference", "id": "x"},
                ]
            },
            id="other_items",
        ),
    ]


@pytest.mark.parametrize("extra", ignored_rows())
def test_ignored_fields_change_nothing(raw: httpx2.Client, extra: dict[str, Any]) -> None:
    baseline = post(raw, body("ignored fields")).json()
    response = post(raw, {**body("ignored fields"), **extra})
    assert response.status_code == 200, response.text
    data = response.json()
    assert output_text(data) == output_text(baseline)
    assert data["store"] is False and data["parallel_tool_calls"] is True


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        pytest.param(
            {"previous_response_id": "resp_1"},
            "previous_response_id is not supported",
            id="previous_response_id",
        ),
        pytest.param(
            {"conversation": "conv_1"}, "conversation is not supported", id="conversation"
        ),
        pytest.param({"background": True}, "background is not supported", id="background"),
        pytest.param(
            {"tools": [{"type": "custom", "name": "shell"}]}, "only apply_patch", id="custom_tool"
        ),
        pytest.param({"tools": [{"type": "weird"}]}, "unsupported tool type", id="unknown_tool"),
        pytest.param({"input": None}, "Either input or instructions is required", id="no_input"),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input_image must have image_url or file_id",
            id="image_without_source",
        ),
        pytest.param(
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "u", "file_id": "f"}],
                    }
                ]
            },
            "cannot have both",
            id="image_both",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}
                ]
            },
            "only allowed in user input",
            id="image_in_assistant",
        ),
        pytest.param(
            {"input": [{"role": "tool", "content": "x"}]}, "expected user, assistant", id="bad_role"
        ),
        pytest.param(
            {"text": {"format": {"type": "json_schema", "name": "x"}}},
            "text.format",
            id="schema_missing",
        ),
        pytest.param(
            {"tool_choice": "required", "tools": [WEATHER]},
            "Thinking mode does not support this tool_choice",
            id="forced_choice_thinking",
        ),
        pytest.param({"model": "gpt-4o"}, "you passed gpt-4o", id="unknown_model"),
        pytest.param({"temperature": 3}, "temperature", id="temperature"),
    ],
)
def test_refused(raw: httpx2.Client, extra: dict[str, Any], fragment: str) -> None:
    response = post(raw, {**body(), **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]


def test_forced_tool_choice_without_thinking(raw: httpx2.Client) -> None:
    data = body("anything", tools=[WEATHER], reasoning={"effort": "none"})
    named = post(raw, {**data, "tool_choice": {"type": "function", "name": "get_weather"}}).json()
    assert [o["type"] for o in named["output"]] == ["function_call"]
    none = post(raw, {**data, "input": "get_weather", "tool_choice": "none"}).json()
    assert [o["type"] for o in none["output"]] == ["message"]


def test_v1_path(raw: httpx2.Client) -> None:
    response = raw.post("/v1/responses", json=body())
    assert response.status_code == 200 and response.json()["object"] == "response"


def test_status_fault(sdk: OpenAI) -> None:
    with pytest.raises(RateLimitError) as caught:
        sdk.responses.create(
            model="deepseek-flash", input="x", extra_headers={"X-Sim-Status": "429"}
        )
    assert caught.value.status_code == 429


def test_dropped_stream(raw: httpx2.Client, sdk: OpenAI) -> None:
    received = bytearray()
    headers = {"X-Sim-Drop-After-Events": "4"}
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        raw.stream("POST", "/responses", json=body(stream=True), headers=headers) as response,
    ):
        for chunk in response.iter_raw():
            received += chunk
    assert [d["sequence_number"] for _, d in named_events(bytes(received))] == [0, 1, 2, 3]
    stream = sdk.responses.create(
        model="deepseek-flash", input="x", stream=True, extra_headers=headers
    )
    with pytest.raises(APIConnectionError):  # the SDK sees the broken transfer
        list(stream)


def test_no_done_drops_the_terminal_event(raw: httpx2.Client) -> None:
    events = named_events(post(raw, body(stream=True), **{"X-Sim-No-Done": "1"}).content)
    assert events[-1][0] == "response.output_item.done"


def test_insufficient_fails_the_response(raw: httpx2.Client) -> None:
    response = post(raw, body(), **{"X-Sim-Insufficient-After-Events": "3"}).json()
    assert response["status"] == "failed" and response["error"]["code"] == "server_error"
    assert response["usage"]["output_tokens"] == 3
