"""`continue_stream`: an answer continued from a start the caller already has gives
exactly the unbroken answer, through the same resume machinery as a broken stream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dskit import AsyncDeepSeek, DeepSeek, ValidationError
from dskit.client._driver import prefix_message

from .conftest import faults_once

PROMPT = [{"role": "user", "content": "Write a long answer about rivers and mountains"}]


def _pieces(client: DeepSeek, **params: Any) -> tuple[list[str], Any]:
    """The unbroken answer, piece by piece, and its result (thinking off unless asked)."""
    params.setdefault("thinking", False)
    with client.stream(PROMPT, **params) as stream:
        pieces = [e.text for e in stream if e.type == "content"]
        return pieces, stream.final()


def _continue(client: DeepSeek, content: str, **params: Any) -> tuple[list[Any], Any, Any]:
    """Events, the snapshot before any of them, and the final result of a continuation."""
    params.setdefault("thinking", False)
    with client.continue_stream(PROMPT, content, **params) as stream:
        before = stream.snapshot()
        events = list(stream)
        return events, before, stream.final()


def _text(events: list[Any]) -> str:
    return "".join(e.text for e in events if e.type == "content")


@pytest.mark.parametrize("cut", [1, 2, 7, 20])
def test_continuing_from_any_cut_gives_the_unbroken_answer(
    client: DeepSeek, sim: Any, cut: int
) -> None:
    pieces, unbroken = _pieces(client)
    assert cut < len(pieces)
    start = "".join(pieces[:cut])
    prefix_requests = sim.stats["prefix_requests"]
    events, before, result = _continue(client, start, pieces=cut)
    assert before.content == start, "the start is part of the answer from the outset"
    assert _text(events) == unbroken.content[len(start) :], "the start yields no events"
    assert result.content == unbroken.content and result.finish_reason == "stop"
    assert result.usage is not None and result.resumes == 0
    assert [e.type for e in events if e.type in ("resumed", "retrying")] == []
    assert events[-1].type == "done" and events[-1].result.content == unbroken.content
    assert sim.stats["prefix_requests"] == prefix_requests + 1


def test_an_empty_start_is_a_plain_stream(client: DeepSeek, sim: Any) -> None:
    _, unbroken = _pieces(client)
    prefix_requests = sim.stats["prefix_requests"]
    _, _, result = _continue(client, "")
    assert result.content == unbroken.content
    assert sim.stats["prefix_requests"] == prefix_requests


def test_the_start_counts_against_max_tokens(client: DeepSeek) -> None:
    pieces, whole = _pieces(client, max_tokens=8)
    assert whole.finish_reason == "length"
    start = "".join(pieces[:3])
    _, _, result = _continue(client, start, pieces=3, max_tokens=8)
    assert result.content == whole.content and result.finish_reason == "length"
    _, _, uncounted = _continue(client, start, max_tokens=8)
    assert len(uncounted.content) > len(whole.content), "pieces=0: 8 more tokens"


def test_a_continuation_that_breaks_is_resumed(client: DeepSeek, sim: Any) -> None:
    pieces, unbroken = _pieces(client)
    start = "".join(pieces[:4])
    prefix_requests = sim.stats["prefix_requests"]
    headers = faults_once(Drop_After_Events=3)
    events, _, result = _continue(client, start, pieces=4, extra_headers=headers)
    assert _text(events) == unbroken.content[len(start) :]
    assert [e.type for e in events].count("resumed") == 1 and result.resumes == 1
    assert result.content == unbroken.content
    assert sim.stats["prefix_requests"] == prefix_requests + 2


def test_a_failure_before_new_output_is_retried_not_resumed(client: DeepSeek) -> None:
    pieces, unbroken = _pieces(client)
    start = "".join(pieces[:4])
    events, _, result = _continue(client, start, pieces=4, extra_headers=faults_once(Status=503))
    kinds = [e.type for e in events]
    assert kinds.count("retrying") == 1 and "resumed" not in kinds
    assert result.content == unbroken.content and result.resumes == 0


def test_a_reasoner_continues_inside_its_reasoning(sim_factory: Any) -> None:
    """A server that continues thinking from a prefix (the lenient reading)."""
    lenient = sim_factory(reasoning_prefix=True)
    with DeepSeek("sk-test", base_url=lenient.base_url) as client:
        unbroken = client.chat(PROMPT, model="deepseek-flash", thinking=True)
        reasoning = unbroken.reasoning_content or ""
        start = reasoning[: len(reasoning) // 2]
        with client.continue_stream(
            PROMPT, "", reasoning=start, model="deepseek-flash", thinking=True
        ) as stream:
            events = list(stream)
            result = stream.final()
    rest = "".join(e.text for e in events if e.type == "reasoning")
    assert start + rest == reasoning == result.reasoning_content
    assert result.content == unbroken.content
    assert not any(e.type == "resumed" for e in events)


def test_a_server_that_will_not_continue_thinking_restarts_it(client: DeepSeek) -> None:
    """The strict reading (the simulator's default): the prefix with the thinking is
    refused, so the answer is asked again and its thinking restarts; no text is lost."""
    unbroken = client.chat(PROMPT, model="deepseek-flash", thinking=True)
    reasoning = unbroken.reasoning_content or ""
    with client.continue_stream(
        PROMPT, "", reasoning=reasoning[:40], model="deepseek-flash", thinking=True
    ) as stream:
        events = list(stream)
        result = stream.final()
    restarts = [e for e in events if e.type == "resumed"]
    assert len(restarts) == 1 and restarts[0].restarted
    after = events[events.index(restarts[0]) + 1 :]
    assert "".join(e.text for e in after if e.type == "reasoning") == reasoning
    assert result.reasoning_content == reasoning and result.content == unbroken.content


@pytest.mark.parametrize(
    ("args", "params", "param"),
    [
        ((None,), {}, "content"),
        (("x",), {"reasoning": 3}, "reasoning"),
        (("x",), {"pieces": -1}, "pieces"),
        (("x",), {"temperature": 5}, "temperature"),
    ],
)
def test_bad_arguments_fail_before_the_network(
    client: DeepSeek, sim: Any, args: tuple[Any, ...], params: dict[str, Any], param: str
) -> None:
    requests = sim.stats["requests"]
    with pytest.raises(ValidationError) as info:
        client.continue_stream(PROMPT, *args, **params)
    assert info.value.param == param
    assert sim.stats["requests"] == requests


def test_the_prefix_message_shape() -> None:
    plain = {"model": "deepseek-flash", "thinking": {"type": "disabled"}}
    thinking = {"model": "deepseek-flash"}
    assert prefix_message(plain, "Hel", "thinking") == {
        "role": "assistant",
        "content": "Hel",
        "prefix": True,
    }
    reasoner = prefix_message(thinking, "", "thinking")
    assert reasoner["reasoning_content"] == "thinking" and reasoner["content"] == ""
    assert "reasoning_content" not in prefix_message(thinking, "Hel", "thinking")


def _sync_continue(sim: Any, start: str, params: dict[str, Any]) -> tuple[list[Any], Any]:
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        with client.continue_stream(PROMPT, start, pieces=5, **params) as stream:
            return list(stream), stream.final()


async def _async_continue(sim: Any, start: str, params: dict[str, Any]) -> tuple[list[Any], Any]:
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        async with client.continue_stream(PROMPT, start, pieces=5, **params) as stream:
            return [e async for e in stream], await stream.final()


@pytest.mark.parametrize("params", [{}, {"max_tokens": 9}], ids=["plain", "limited"])
async def test_sync_and_async_continue_alike(sim: Any, params: dict[str, Any]) -> None:
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        pieces, unbroken = _pieces(client, **params)
    start = "".join(pieces[:5])
    sync_events, sync_result = await asyncio.to_thread(_sync_continue, sim, start, params)
    async_events, async_result = await _async_continue(sim, start, params)
    shape = [(e.type, getattr(e, "text", "")) for e in sync_events[:-1]]
    assert [(e.type, getattr(e, "text", "")) for e in async_events[:-1]] == shape
    assert async_result.content == sync_result.content == unbroken.content
    assert async_result.finish_reason == sync_result.finish_reason == unbroken.finish_reason
