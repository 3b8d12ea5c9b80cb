"""Broken streams are resumed through prefix completion: no token lost, none repeated."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dskit import (
    APITimeoutError,
    AsyncDeepSeek,
    DeepSeek,
    IncompleteStreamError,
    RetryPolicy,
    Timeout,
)
from dskit.client import ContentDelta, Resumed
from dskit.client._driver import plain_delta

from .conftest import FIXED_JITTER, faults_once

PROMPT = [{"role": "user", "content": "Write a long answer about rivers and mountains"}]


def _collect(client: DeepSeek, **params: Any) -> tuple[str, list[Any], Any]:
    params.setdefault("thinking", False)  # the thinking-mode cuts are their own tests
    with client.stream(PROMPT, **params) as stream:
        events = list(stream)
        result = stream.final()
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    return text, events, result


@pytest.fixture(scope="module")
def unbroken(sim: Any) -> str:
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as c:
        return c.chat(PROMPT, thinking=False).content


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(min_value=2, max_value=40))
def test_any_cut_point_resumes_to_the_unbroken_text(
    client: DeepSeek, unbroken: str, cut: int
) -> None:
    text, events, result = _collect(client, extra_headers=faults_once(Drop_After_Events=cut))
    assert text == unbroken == result.content
    assert result.finish_reason == "stop"
    resumed = [e for e in events if isinstance(e, Resumed)]
    if cut < len(unbroken.split()):
        assert len(resumed) == 1 and result.resumes == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"Drop_After_Bytes": 900},
        {"End_After_Events": 6},
        {"Insufficient_After_Events": 5},
        {"Aborted_After_Events": 5},
        {"Malformed_At": 7},
    ],
    ids=[
        "dropped-bytes",
        "clean-end-without-finish",
        "insufficient-resources",
        "aborted-by-the-server",
        "malformed",
    ],
)
def test_each_kind_of_break_is_resumed(
    client: DeepSeek, sim: Any, unbroken: str, fault: dict[str, Any]
) -> None:
    before = sim.stats["prefix_requests"]
    text, events, result = _collect(client, extra_headers=faults_once(**fault))
    assert text == unbroken == result.content
    assert any(isinstance(e, Resumed) for e in events)
    assert sim.stats["prefix_requests"] == before + 1


def test_finish_chunk_without_done_is_complete_not_resumed(client: DeepSeek, unbroken: str) -> None:
    text, events, result = _collect(client, extra_headers={"X-Sim-No-Done": "1"})
    assert text == unbroken and result.finish_reason == "stop"
    assert not any(isinstance(e, Resumed) for e in events)


def test_several_breaks_in_one_answer(client: DeepSeek, unbroken: str) -> None:
    text, _, result = _collect(client, extra_headers=faults_once(3, Drop_After_Events=3))
    assert text == unbroken
    assert result.resumes == 3


def test_resumes_exhausted_raise_with_the_partial_answer(client: DeepSeek, unbroken: str) -> None:
    with pytest.raises(IncompleteStreamError) as info:
        _collect(client, max_resumes=1, extra_headers={"X-Sim-Drop-After-Events": "4"})
    partial = info.value.partial
    assert partial.content and unbroken.startswith(partial.content)
    assert partial.content != unbroken
    assert partial.finish_reason is None  # never passed off as complete


def test_a_tool_call_cut_mid_arguments_is_not_resumed(client: DeepSeek) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query", "limit"],
            },
        },
    }
    with pytest.raises(IncompleteStreamError, match="tool call") as info:
        client.chat(
            "please lookup something",
            tools=[tool],
            tool_choice="required",
            thinking=False,
            extra_headers=faults_once(Drop_After_Events=3),
        )
    assert info.value.partial.tool_calls


def test_reasoner_resumes_inside_reasoning_and_inside_content(client: DeepSeek) -> None:
    unbroken = client.chat(PROMPT, model="deepseek-flash", thinking=True)
    for cut in (3, len((unbroken.reasoning_content or "").split()) + 4):
        result = client.chat(
            PROMPT,
            model="deepseek-flash",
            thinking=True,
            extra_headers=faults_once(Drop_After_Events=cut),
        )
        assert result.reasoning_content == unbroken.reasoning_content
        assert result.content == unbroken.content
        assert result.resumes == 1


@pytest.mark.parametrize("lenient", [False, True], ids=["thinking-restarts", "thinking-continues"])
def test_a_cut_inside_the_thinking_under_both_readings(sim_factory: Any, lenient: bool) -> None:
    """Strict server: the reasoning prefix is refused and the thinking restarts; lenient
    server: it continues from the prefix. Either way the final answer is the unbroken one."""
    sim = sim_factory(reasoning_prefix=lenient)
    with DeepSeek("sk-test", base_url=sim.base_url) as client:
        unbroken = client.chat(PROMPT, thinking=True)
        with client.stream(
            PROMPT, thinking=True, extra_headers=faults_once(Drop_After_Events=4)
        ) as s:
            events = list(s)
            result = s.final()
    resumed = [e for e in events if e.type == "resumed"]
    assert [e.restarted for e in resumed] == ([False] if lenient else [False, True])
    assert result.reasoning_content == unbroken.reasoning_content
    assert result.content == unbroken.content and result.resumes == 1


def test_stall_trips_the_idle_timeout_and_the_stream_resumes(sim: Any, unbroken: str) -> None:
    headers = faults_once(Stall_After_Events=5, Stall_Ms=5000)
    with DeepSeek("sk-x-123456", base_url=sim.base_url, timeout=Timeout(idle=0.3)) as c:
        result = c.chat(PROMPT, extra_headers=headers)
    assert result.content == unbroken and result.resumes == 1


def test_keep_alives_do_not_reset_the_idle_timer(sim: Any) -> None:
    headers = {"X-Sim-Queue-Ms": "3000", "X-Sim-Keepalive-Ms": "50"}
    timeout = Timeout(idle=0.4, read=5.0)
    with DeepSeek("sk-x-123456", base_url=sim.base_url, timeout=timeout, max_resumes=0) as c:
        with pytest.raises(APITimeoutError, match="idle"):
            c.chat("hi", extra_headers=headers, retry=RetryPolicy(max_retries=0))


def test_keep_alives_surface_as_events_while_queued(client: DeepSeek) -> None:
    headers = {"X-Sim-Queue-Ms": "300", "X-Sim-Keepalive-Ms": "50"}
    with client.stream("hi", extra_headers=headers) as stream:
        kinds = [e.type for e in stream]
    assert kinds[0] == "keep_alive"
    assert "keep_alive" not in kinds[kinds.index("content") :]


@pytest.mark.parametrize("cut", [2, 3, 8, 21, 40])
async def test_wire_hands_on_every_token_once_across_a_resume(
    sim_factory: Any, unbroken: str, cut: int
) -> None:
    """A relay reading `wire()` gets plain reads of the first attempt as bytes, the rest
    as events; together they are the unbroken text, once, and so is the final result.
    (Tokens 2 ms apart, so that reads hold one chunk each, as from a real server.)"""
    paced = sim_factory(token_ms=2)
    async with AsyncDeepSeek("sk-test-000000", base_url=paced.base_url, retry=FIXED_JITTER) as c:
        async with c.stream(PROMPT, extra_headers=faults_once(Drop_After_Events=cut)) as stream:
            items: list[Any] = [await anext(stream)]
            items += [item async for item in stream.wire()]
    pieces, resumed = [], False
    for item in items:
        if isinstance(item, bytes):
            assert not resumed, "only the first attempt's reads pass on as bytes"
            for block in item.split(b"\n\n")[:-1]:
                chunk = orjson.loads(block.removeprefix(b"data: "))
                assert plain_delta(chunk)
                pieces.append(chunk["choices"][0]["delta"].get("content") or "")
        elif isinstance(item, Resumed):
            resumed = True
        elif isinstance(item, ContentDelta):
            pieces.append(item.text)
    assert "".join(pieces) == unbroken == items[-1].result.content
    # the role chunk and the first content arrive before wire(): from the third on
    assert any(isinstance(item, bytes) for item in items) == (cut >= 3)
    assert resumed == (cut < len(unbroken.split()))
