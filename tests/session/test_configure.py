"""configure (settings saved in the store), retry_stream and SessionStream.snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dskit import (
    AsyncChatSession,
    AsyncDeepSeek,
    ChatSession,
    DeepSeek,
    SQLiteStore,
    ValidationError,
)
from dskit.client import ContentDelta
from dskit.store import SessionConflictError, SessionStore
from tests.session.conftest import get_weather


def test_configure_persists_model_system_and_params(
    client: DeepSeek, any_store: SessionStore
) -> None:
    s = ChatSession(client, system="old", store=any_store, params={"temperature": 0.2})
    s.send("hello")
    version = s.version
    s.configure(model="deepseek-v4-pro", system="new prompt", params={"top_p": 0.5})
    assert s.version == version + 1
    assert (s.model, s.system) == ("deepseek-v4-pro", "new prompt")
    assert s.params == {"temperature": 0.2, "top_p": 0.5}
    assert s.messages[0] == {"role": "system", "content": "new prompt"}
    stored = any_store.load(s.id)
    assert (stored.model, stored.system, stored.params) == (
        "deepseek-v4-pro", "new prompt", {"temperature": 0.2, "top_p": 0.5},
    )  # fmt: skip
    again = ChatSession.load(client, s.id, store=any_store)
    assert (again.model, again.system, again.params) == (s.model, s.system, s.params)
    assert again.send("and now?").model == "deepseek-v4-pro"  # the request used it


def test_configure_none_drops_a_param_and_empty_system_removes_the_prompt(
    client: DeepSeek,
) -> None:
    s = ChatSession(client, system="sys", params={"temperature": 0.2, "top_p": 0.9})
    s.configure(system="", params={"temperature": None})
    assert s.system is None and s.params == {"top_p": 0.9}
    assert s.messages == []
    s.configure(model="deepseek-flash")  # keeps everything else
    assert s.system is None and s.params == {"top_p": 0.9}
    version = s.version
    s.configure()  # nothing to change: nothing written
    assert s.version == version == s.store.load(s.id).version


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"params": {"temprature": 1}}, "params"),
        ({"params": {"temperature": 5}}, "temperature"),
        ({"params": {"stop": 3}}, "stop"),
        ({"params": {"tool_choice": "sometimes"}}, "tool_choice"),
        ({"params": "temperature=1"}, "params"),
        ({"model": ""}, "model"),
        ({"system": 42}, "system"),
        ({"params": {"thinking": "on"}}, "thinking"),
        ({"params": {"effort": "extreme"}}, "effort"),
        ({"params": {"tool_choice": "required"}}, "tool_choice"),  # thinking is on
    ],
)
def test_bad_configure_is_refused_before_anything_is_stored(
    client: DeepSeek, tmp_path: Path, fields: dict[str, object], param: str
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    s = ChatSession(client, store=store, params={"temperature": 1}, tools=[get_weather])
    with pytest.raises(ValidationError) as info:
        s.configure(**fields)
    assert info.value.param == param
    stored = store.load(s.id)
    assert stored.version == 0 and stored.params == {"temperature": 1}
    assert s.version == 0 and s.params == {"temperature": 1} and s.model == "deepseek-flash"
    store.close()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"params": {"temperature": 5}}, "temperature"),
        ({"params": {"stop": {"a", "b"}}}, "params"),  # not JSON: once a crash in the store
        ({"params": {"thinking": "on"}}, "thinking"),
        ({"params": {"effort": "extreme"}}, "effort"),
        ({"params": {"tool_choice": "required"}}, "tool_choice"),  # thinking is on
        ({"model": ""}, "model"),
        ({"system": 42}, "system"),
    ],
)
def test_bad_settings_at_creation_are_refused_before_anything_is_stored(
    client: DeepSeek, tmp_path: Path, fields: dict[str, Any], param: str
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    with pytest.raises(ValidationError) as info:
        ChatSession(client, store=store, **fields)
    assert info.value.param == param
    assert store.list_sessions() == []
    store.close()


async def test_async_bad_settings_at_creation_are_refused(aclient: AsyncDeepSeek) -> None:
    with pytest.raises(ValidationError) as info:
        AsyncChatSession(aclient, params={"stop": {"a"}})
    assert info.value.param == "params"


def test_configure_by_a_stale_writer_is_a_conflict(client: DeepSeek, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    a = ChatSession(client, store=store)
    b = ChatSession.load(client, a.id, store=store)
    a.send("from a")
    with pytest.raises(SessionConflictError):
        b.configure(model="deepseek-v4-pro")
    assert store.load(a.id).model == "deepseek-flash" and b.model == "deepseek-flash"
    b.reload()
    b.configure(model="deepseek-v4-pro")
    assert store.load(a.id).model == "deepseek-v4-pro"
    store.close()


def test_retry_stream_streams_a_new_answer_to_the_same_question(
    client: DeepSeek, any_store: SessionStore
) -> None:
    s = ChatSession(client, store=any_store)
    first = s.send("one question")
    question = any_store.load(s.id).messages[0]
    with s.retry_stream() as st:
        texts = [e.text for e in st if isinstance(e, ContentDelta)]
        result = st.final()
    assert "".join(texts) == result.content == first.content
    stored = any_store.load(s.id).messages
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].to_dict() == question.to_dict()  # kept, not deleted and added again
    assert s.retry().content == first.content
    with pytest.raises(ValidationError, match="no user message"):
        ChatSession(client).retry_stream()


def test_snapshot_is_the_reply_so_far_then_the_finished_one(client: DeepSeek) -> None:
    s = ChatSession(client)
    with s.stream("a long answer please") as st:
        assert st.snapshot() is None
        seen = ""
        for event in st:
            if isinstance(event, ContentDelta):
                seen += event.text
                snap = st.snapshot()
                assert snap is not None and snap.content == seen
        done = st.final()
        assert st.snapshot() is done and done.usage is not None


def test_snapshot_after_leaving_early_keeps_the_partial_reply(client: DeepSeek) -> None:
    s = ChatSession(client)
    with s.stream("a long answer please", extra_headers={"X-Sim-Token-Ms": "5"}) as st:
        seen = ""
        for event in st:
            if isinstance(event, ContentDelta):
                seen += event.text
                if len(seen) > 10:
                    break
    snap = st.snapshot()
    assert snap is not None and snap.content == seen and snap.usage is None
    assert s.history[-1].incomplete and s.history[-1].content == seen


def test_snapshot_of_a_tool_turn_is_the_reply_in_progress(client: DeepSeek) -> None:
    s = ChatSession(client, tools=[get_weather])
    with s.stream("get_weather in Oslo?") as st:
        for event in st:
            if event.type == "done" and event.result.tool_calls:
                snap = st.snapshot()
                assert snap is not None and snap.tool_calls  # the finished tool-call reply
        final = st.final()
    assert st.snapshot() is final and not final.tool_calls


async def test_async_configure_retry_stream_and_snapshot_match_sync(
    client: DeepSeek, aclient: AsyncDeepSeek, tmp_path: Path
) -> None:
    sync = ChatSession(client, system="sys", store=SQLiteStore(tmp_path / "a.db"))
    asession = AsyncChatSession(aclient, system="sys", store=SQLiteStore(tmp_path / "b.db"))
    await asyncio.to_thread(sync.send, "hello")
    await asession.send("hello")
    changes = {"model": "deepseek-v4-pro", "system": "", "params": {"temperature": 0.7}}
    await asyncio.to_thread(lambda: sync.configure(**changes))
    await asession.configure(**changes)
    assert (asession.model, asession.system, asession.params, asession.version) == (
        sync.model, sync.system, sync.params, sync.version,
    )  # fmt: skip
    with pytest.raises(ValidationError):
        await asession.configure(params={"bogus": 1})
    async with await asession.retry_stream() as st:
        assert st.snapshot() is None
        texts = [e.text async for e in st if isinstance(e, ContentDelta)]
        result = await st.final()
        assert st.snapshot() is result
    expected = await asyncio.to_thread(sync.retry)
    assert "".join(texts) == result.content == expected.content
    assert result.model == "deepseek-v4-pro"
    assert [m.role for m in asession.history] == [m.role for m in sync.history]
    reloaded = await AsyncChatSession.load(aclient, asession.id, store=asession.store)
    assert (reloaded.model, reloaded.system, reloaded.params) == (
        "deepseek-v4-pro", None, {"temperature": 0.7},
    )  # fmt: skip
