"""The official `openai` package talks to the simulator with only base_url swapped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_city",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["name", "limit"],
        },
    },
}


@pytest.fixture
def openai_client(sim: Any) -> Iterator[OpenAI]:
    client = OpenAI(api_key="sk-openai-compat", base_url=sim.base_url, max_retries=0)
    yield client
    client.close()


def test_plain(openai_client: OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model="deepseek-flash",
        extra_body={"thinking": {"type": "disabled"}},
        messages=[{"role": "user", "content": "Hello from openai"}],
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_streaming(openai_client: OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Stream to openai"}]
    stream = openai_client.chat.completions.create(
        model="deepseek-flash",
        extra_body={"thinking": {"type": "disabled"}},
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = openai_client.chat.completions.create(
        model="deepseek-flash", extra_body={"thinking": {"type": "disabled"}}, messages=messages
    )
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]


def test_tool_calls(openai_client: OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "use lookup_city for Lima"}]
    completion = openai_client.chat.completions.create(
        model="deepseek-flash",
        extra_body={"thinking": {"type": "disabled"}},
        messages=messages,
        tools=[TOOL],  # type: ignore[list-item]
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == "lookup_city"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(args["name"], str) and isinstance(args["limit"], int)
    stream = openai_client.chat.completions.create(
        model="deepseek-flash",
        extra_body={"thinking": {"type": "disabled"}},
        messages=messages,
        tools=[TOOL],
        stream=True,  # type: ignore[list-item]
    )
    arguments = ""
    for chunk in stream:
        for fragment in chunk.choices[0].delta.tool_calls or []:
            assert fragment.index == 0
            arguments += fragment.function.arguments or ""  # type: ignore[union-attr]
    assert json.loads(arguments) == args


def test_reasoner_fields(openai_client: OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Think first"}]
    completion = openai_client.chat.completions.create(model="deepseek-flash", messages=messages)
    message: Any = completion.choices[0].message
    assert message.reasoning_content and message.content
    stream = openai_client.chat.completions.create(
        model="deepseek-flash", messages=messages, stream=True
    )
    reasoning, content = "", ""
    for chunk in stream:
        delta: Any = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert reasoning == message.reasoning_content
    assert content == message.content


def test_errors_map_to_openai_exceptions(sim: Any) -> None:
    import openai

    client = OpenAI(
        api_key="sk-x",
        base_url=sim.base_url,
        max_retries=0,
        default_headers={"X-Sim-Status": "429"},
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="deepseek-flash",
            extra_body={"thinking": {"type": "disabled"}},
            messages=[{"role": "user", "content": "x"}],
        )
    assert caught.value.status_code == 429
    client.close()
