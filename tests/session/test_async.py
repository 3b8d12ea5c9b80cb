"""AsyncChatSession: the same behaviour as ChatSession, without blocking the loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from dskit import AsyncChatSession, AsyncDeepSeek, ChatSession, DeepSeek, SQLiteStore, tool
from dskit.client import ContentDelta
from dskit.store import SessionConflictError, SessionStore
from tests.session.conftest import explode, get_time, get_weather

SCRIPT = [
    "hello there",
    "Use get_weather for Paris and get_time for Europe/Paris",
    "now explode please",
    "thanks, that is all",
]


def shape(history: list[Any]) -> list[tuple[Any, ...]]:
    """What must match between the shells (ids and times are per run)."""
    out = []
    for m in history:
        calls = [c["function"]["name"] for c in m.message.get("tool_calls") or []]
        out.append((m.role, m.content, tuple(calls), m.incomplete, m.summary, m.tokens))
    return out


async def test_async_parity_with_sync(
    client: DeepSeek, aclient: AsyncDeepSeek, tmp_path: Path
) -> None:
    tools = [get_weather, get_time, explode]
    sync = ChatSession(client, system="sys", store=SQLiteStore(tmp_path / "a.db"), tools=tools)
    asession = AsyncChatSession(
        aclient, system="sys", store=SQLiteStore(tmp_path / "b.db"), tools=tools
    )
    for text in SCRIPT:
        expected = await asyncio.to_thread(sync.send, text)
        got = await asession.send(text)
        assert got.content == expected.content
    assert shape(asession.history) == shape(sync.history)
    a, b = asession.usage_total, sync.usage_total  # cache hits differ: the sim's cache is shared
    assert (a.prompt_tokens, a.completion_tokens) == (b.prompt_tokens, b.completion_tokens)
    assert asession.title == sync.title == "hello there"
    assert (await asession.undo()) == await asyncio.to_thread(sync.undo)
    assert shape(asession.history) == shape(sync.history)
    retried = await asession.retry()
    assert retried.content == (await asyncio.to_thread(sync.retry)).content


async def test_async_session_on_every_store(
    aclient: AsyncDeepSeek, any_store: SessionStore
) -> None:
    s = AsyncChatSession(aclient, system="sys", store=any_store, tools=[get_weather])
    result = await s.send("get_weather in Lima?")
    stored = await any_store.aload(s.id)
    assert [m.role for m in stored.messages] == ["user", "assistant", "tool", "assistant"]
    assert stored.messages[-1].content == result.content
    fork = await s.fork()
    assert fork.messages == s.messages and fork.id != s.id
    again = await AsyncChatSession.load(aclient, s.id, store=any_store)
    assert again.messages == s.messages
    exported = await s.export()
    assert exported["session"]["id"] == s.id
    await any_store.aclose()


async def test_parallel_tool_calls_run_concurrently(aclient: AsyncDeepSeek) -> None:
    """Each tool waits for the other to start: this only finishes if they overlap."""
    started = {"ping": asyncio.Event(), "pong": asyncio.Event()}

    @tool
    async def ping(n: int) -> str:
        """Ping."""
        started["ping"].set()
        await asyncio.wait_for(started["pong"].wait(), 10)
        return "ping done"

    @tool
    async def pong(n: int) -> str:
        """Pong."""
        started["pong"].set()
        await asyncio.wait_for(started["ping"].wait(), 10)
        return "pong done"

    s = AsyncChatSession(aclient, tools=[ping, pong])
    result = await s.send("call ping and pong")
    assert "ping done" in result.content and "pong done" in result.content


async def test_sync_tools_run_off_the_event_loop(aclient: AsyncDeepSeek) -> None:
    loop_threads: list[bool] = []

    @tool
    def where(flag: bool) -> str:
        """Report whether this runs on the event loop's thread."""
        try:
            asyncio.get_running_loop()
            loop_threads.append(True)
        except RuntimeError:
            loop_threads.append(False)
        return "ok"

    await AsyncChatSession(aclient, tools=[where]).send("where are you?")
    assert loop_threads == [False]


async def test_async_stream_saves_partial_when_left_early(
    aclient: AsyncDeepSeek, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    s = AsyncChatSession(aclient, store=store, params={"thinking": False})
    async with await s.stream("a long answer please") as st:
        async for event in st:
            if isinstance(event, ContentDelta):
                break
    stored = store.load(s.id).messages
    assert stored[-1].incomplete and stored[-1].content
    assert json.dumps(await s.export())


async def test_async_conflict_is_reported(aclient: AsyncDeepSeek, tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a = AsyncChatSession(aclient, store=SQLiteStore(path))
    await a.send("first")
    b = AsyncChatSession(aclient, store=SQLiteStore(path), session_id=a.id)
    await b.open()
    await a.send("second")
    with pytest.raises(SessionConflictError):
        await b.send("stale")
    await b.reload()
    await b.send("fresh")
    assert [m.content for m in b.history if m.role == "user"] == ["first", "second", "fresh"]


async def test_async_refused_question_is_taken_back(aclient: AsyncDeepSeek) -> None:
    from dskit import ValidationError

    s = AsyncChatSession(aclient)
    with pytest.raises(ValidationError, match="temperature"):
        await s.send("hi", temperature=9)
    assert s.history == []
    assert (await s.send("hi")).content
