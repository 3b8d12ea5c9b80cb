"""The async client does what the sync client does, event for event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dskit import AsyncDeepSeek, DeepSeek, IncompleteStreamError, RateLimitError, ValidationError

from .conftest import FIXED_JITTER, FakeClock, faults_once

TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}

CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("reasoner", {"model": "deepseek-flash"}),
    ("tools", {"tools": [TOOL], "tool_choice": "required", "thinking": False}),
    ("json", {"response_format": {"type": "json_object"}}),
    ("limited", {"max_tokens": 5, "thinking": False}),
]


def _shape(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.type, getattr(e, "text", "") or getattr(e, "arguments", "")) for e in events]


def _sync_events(sim: Any, params: dict[str, Any]) -> tuple[list[Any], Any]:
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        with client.stream(
            "parity: what time is it? get_time (in JSON when asked)", **params
        ) as stream:
            return list(stream), stream.final()


async def _async_events(sim: Any, params: dict[str, Any]) -> tuple[list[Any], Any]:
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        async with client.stream(
            "parity: what time is it? get_time (in JSON when asked)", **params
        ) as stream:
            return [e async for e in stream], await stream.final()


@pytest.mark.parametrize(("name", "params"), CASES, ids=[c[0] for c in CASES])
async def test_same_events_and_result(sim: Any, name: str, params: dict[str, Any]) -> None:
    sync_events, sync_result = await asyncio.to_thread(_sync_events, sim, params)
    async_events, async_result = await _async_events(sim, params)
    assert _shape(async_events[:-1]) == _shape(sync_events[:-1])
    assert async_result.content == sync_result.content
    assert async_result.tool_calls == sync_result.tool_calls
    assert async_result.finish_reason == sync_result.finish_reason


async def test_async_resume_matches_unbroken(aclient: AsyncDeepSeek) -> None:
    unbroken = await aclient.chat("resume in async")
    for cut in (2, 5, 11):
        result = await aclient.chat(
            "resume in async", extra_headers=faults_once(Drop_After_Events=cut)
        )
        assert result.content == unbroken.content and result.resumes == 1


async def test_async_retry_timing_matches_sync(sim: Any) -> None:
    sync_clock, async_clock = FakeClock(), FakeClock()
    headers = {"X-Sim-Status": "429"}
    with DeepSeek("sk-t-123456", base_url=sim.base_url, clock=sync_clock, retry=FIXED_JITTER) as c:
        with pytest.raises(RateLimitError):
            c.chat("x", extra_headers=headers)
    async with AsyncDeepSeek(
        "sk-t-123456", base_url=sim.base_url, clock=async_clock, retry=FIXED_JITTER
    ) as ac:
        with pytest.raises(RateLimitError):
            await ac.chat("x", extra_headers=headers)
    assert async_clock.sleeps == sync_clock.sleeps == [1.0, 2.0, 4.0]


async def test_async_errors_match(aclient: AsyncDeepSeek) -> None:
    with pytest.raises(ValidationError):
        await aclient.chat("x", temperature=9)
    with pytest.raises(IncompleteStreamError) as info:
        await aclient.chat(
            "x", thinking=False, max_resumes=0, extra_headers={"X-Sim-Drop-After-Events": "3"}
        )
    assert info.value.partial.content


async def test_async_other_endpoints(aclient: AsyncDeepSeek) -> None:
    assert [m.id for m in await aclient.models()]
    assert (await aclient.balance()).is_available
    assert (await aclient.fim("x = ", suffix="\n", max_tokens=5)).text


async def test_many_concurrent_async_streams_share_one_pool(aclient: AsyncDeepSeek) -> None:
    results = await asyncio.gather(*(aclient.chat(f"question {i}") for i in range(50)))
    assert len({r.content for r in results}) > 1
    assert all(r.finish_reason == "stop" for r in results)
