"""ChatSession end to end: the simulator over HTTP, real stores."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from dskit import (
    ChatSession,
    ContextOverflowError,
    DeepSeek,
    SQLiteStore,
    ValidationError,
)
from dskit._tokens import prompt_overhead
from dskit.client import ContentDelta, Done
from dskit.session import ContextPolicy
from dskit.store import SessionConflictError, SessionNotFoundError, SessionStore
from tests.session.conftest import KEY, explode, get_time, get_weather


def contents(session: ChatSession) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in session.messages]


def test_send_saves_every_message_before_returning(
    client: DeepSeek, any_store: SessionStore
) -> None:
    s = ChatSession(client, system="You are a support agent", store=any_store)
    result = s.send("hello there")
    assert result.content and result.finish_reason == "stop"
    assert contents(s) == [
        ("system", "You are a support agent"),
        ("user", "hello there"),
        ("assistant", result.content),
    ]
    stored = any_store.load(s.id)
    assert [m.content for m in stored.messages] == ["hello there", result.content]
    assert stored.system == "You are a support agent" and stored.title == "hello there"
    assert stored.messages[1].usage == result.usage.to_dict()  # type: ignore[union-attr]
    assert not stored.messages[1].incomplete
    assert s.usage_total == result.usage
    second = s.send("and then?")
    assert s.usage_total.total_tokens == result.usage.total_tokens + second.usage.total_tokens  # type: ignore[union-attr]
    assert len(any_store.load(s.id).messages) == 4


def test_token_counts_become_exact_from_usage(client: DeepSeek) -> None:
    s = ChatSession(client, system="Be brief.")
    first = s.send("hello")
    second = s.send("more please")
    history = s.history
    # Everything sent is now counted exactly; only the newest answer is still estimated.
    # The rest of `prompt_tokens` is the prompt's own start and generation prompt.
    assert all(m.tokens is not None for m in history[:-1]) and history[-1].tokens is None
    system = s._core.fixed_tokens["Be brief."]
    assert first.usage is not None and second.usage is not None
    overhead = prompt_overhead(s.thinking)
    assert overhead + system + history[0].tokens == first.usage.prompt_tokens  # type: ignore[operator]
    sent = sum(m.tokens for m in history[:-1])  # type: ignore[misc]
    assert overhead + system + sent == second.usage.prompt_tokens


def test_load_continues_a_stored_session(client: DeepSeek, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    s = ChatSession(client, system="sys", store=SQLiteStore(path), model="deepseek-flash")
    s.send("remember the word kiwi")
    again = ChatSession.load(client, s.id, store=SQLiteStore(path))
    assert again.messages == s.messages and again.model == "deepseek-flash"
    again.send("what was the word?")
    assert len(again.history) == 4
    with pytest.raises(SessionNotFoundError):
        ChatSession.load(client, "missing", store=SQLiteStore(path))


def test_tool_loop_runs_parallel_calls_and_answers_with_results(
    client: DeepSeek, any_store: SessionStore
) -> None:
    s = ChatSession(client, store=any_store, tools=[get_weather, get_time])
    result = s.send("Use get_weather for Paris and get_time for Europe/Paris")
    roles = [m["role"] for m in s.messages]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]
    call_msg = s.messages[1]
    names = [c["function"]["name"] for c in call_msg["tool_calls"]]
    assert names == ["get_weather", "get_time"]
    results = {m["tool_call_id"]: m["content"] for m in s.messages[2:4]}
    assert set(results) == {c["id"] for c in call_msg["tool_calls"]}
    weather = json.loads(results[call_msg["tool_calls"][0]["id"]])
    assert weather["sky"] == "sunny"
    assert "get_weather returned" in result.content and "get_time returned" in result.content
    assert [m.role for m in any_store.load(s.id).messages] == roles


def test_a_failing_tool_goes_back_to_the_model(client: DeepSeek) -> None:
    s = ChatSession(client, tools=[explode])
    result = s.send("please explode")
    tool_message = s.messages[2]
    assert tool_message["role"] == "tool"
    assert json.loads(tool_message["content"])["error"].startswith("RuntimeError: kaboom")
    assert "explode returned" in result.content and "kaboom" in result.content


def test_async_tool_in_a_sync_session(client: DeepSeek) -> None:
    from dskit import tool

    @tool
    async def lookup(term: str) -> str:
        """Look a term up."""
        return f"definition of {term}"

    result = ChatSession(client, tools=[lookup]).send("lookup the term 'kiwi'")
    assert "definition of" in result.content


def test_stream_yields_client_events_and_saves_as_it_grows(
    client: DeepSeek, tmp_path: Path
) -> None:
    path = tmp_path / "s.sqlite3"
    s = ChatSession(client, store=SQLiteStore(path), save_interval=0.05)
    reader = SQLiteStore(path)
    seen_partial = []
    with s.stream("tell me a story", extra_headers={"X-Sim-Token-Ms": "20"}) as st:
        for event in st:
            if isinstance(event, ContentDelta):
                stored = reader.load(s.id).messages
                if len(stored) == 2 and stored[1].incomplete and stored[1].content:
                    seen_partial.append(stored[1].content)
            if isinstance(event, Done):
                done = event.result
        final = st.final()
    assert final.content == done.content
    assert len(seen_partial) >= 2 and all(final.content.startswith(p) for p in seen_partial)
    last = reader.load(s.id).messages[1]
    assert last.content == final.content and not last.incomplete


def test_leaving_a_stream_early_keeps_the_partial_answer_marked_incomplete(
    client: DeepSeek, any_store: SessionStore
) -> None:
    s = ChatSession(client, store=any_store)
    with s.stream("a long answer please") as st:
        for event in st:
            if isinstance(event, ContentDelta):
                break
    stored = any_store.load(s.id).messages
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].incomplete and stored[1].content
    assert s.history[1].incomplete
    s.send("go on")  # the history is still valid to send
    full = s.retry()
    assert full.content and not s.history[-1].incomplete


def test_undo_retry_fork_export(client: DeepSeek, any_store: SessionStore) -> None:
    s = ChatSession(client, system="sys", store=any_store)
    first = s.send("one")
    s.send("two")
    removed = s.undo()
    assert removed[0]["content"] == "two"
    assert contents(s)[-1] == ("assistant", first.content)
    assert len(any_store.load(s.id).messages) == 2
    again = s.retry()
    assert again.content == first.content  # the simulator is deterministic
    assert len(any_store.load(s.id).messages) == 2
    fork = s.fork()
    assert fork.id != s.id and fork.messages == s.messages
    fork.send("only in the fork")
    assert len(s.history) == 2 and len(fork.history) == 4
    exported = s.export()
    assert exported["format"] == "dskit-session" and exported["session"]["id"] == s.id
    json.dumps(exported)
    with pytest.raises(ValidationError, match="no user message"):
        ChatSession(client).undo()


def test_two_writers_never_lose_a_message(client: DeepSeek, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    a = ChatSession(client, store=SQLiteStore(path))
    b = ChatSession(client, store=SQLiteStore(path), session_id=a.id)
    a.send("from a")
    with pytest.raises(SessionConflictError, match="reload"):
        b.send("from b")
    b.reload()
    b.send("from b")
    stored = SQLiteStore(path).load(a.id).messages
    assert [m.content for m in stored if m.role == "user"] == ["from a", "from b"]


def test_window_keeps_requests_under_budget(client: DeepSeek, any_store: SessionStore) -> None:
    policy = ContextPolicy(windows={"deepseek-flash": 400}, reserve_output=150, margin=0)
    s = ChatSession(client, system="You are terse.", store=any_store, context=policy)
    for i in range(8):
        result = s.send(f"question number {i} about something long enough to count")
        assert result.usage is not None and result.usage.prompt_tokens <= 250
    plan = s._core.plan()
    assert len(plan.messages) < len(s.messages)  # old turns were left out of the request
    assert len(any_store.load(s.id).messages) == 16  # ...but never out of the store


def test_max_turns_sends_only_the_last_turns(client: DeepSeek) -> None:
    s = ChatSession(client, system="sys", context=ContextPolicy(max_turns=2))
    for i in range(4):
        s.send(f"q{i}")
    sent = s._core.plan().messages
    assert [m["content"] for m in sent if m["role"] == "user"] == ["q2", "q3"]


def test_summarize_replaces_old_turns_with_a_stored_summary(
    client: DeepSeek, any_store: SessionStore
) -> None:
    policy = ContextPolicy(
        strategy="summarize", windows={"deepseek-flash": 500}, reserve_output=150, margin=0
    )
    s = ChatSession(client, system="sys", store=any_store, context=policy)
    for i in range(8):
        s.send(f"question number {i} about something long enough to count")
    summaries = [m for m in any_store.load(s.id).messages if m.summary]
    assert summaries and all(m.role == "system" and m.content for m in summaries)
    assert summaries[-1].covers > 0
    assert all(m["role"] != "system" or m["content"] == "sys" for m in s.messages)
    paid = [m.usage["total_tokens"] for m in s.history if m.usage is not None]
    assert s.usage_total.total_tokens == sum(paid)  # the summaries' usage is counted too
    assert len(paid) == 8 + len(summaries)
    sent = s._core.plan().messages
    assert (
        sent[0]["role"] == "system" and "Summary of the earlier conversation" in sent[0]["content"]
    )


def test_error_strategy_raises_and_takes_the_question_back(client: DeepSeek) -> None:
    policy = ContextPolicy(
        strategy="error", windows={"deepseek-flash": 300}, reserve_output=100, margin=0
    )
    s = ChatSession(client, context=policy)
    with pytest.raises(ContextOverflowError, match="budget"):
        for i in range(20):
            s.send(f"question {i} with some words in it to fill the window")
    assert s.messages[-1]["role"] == "assistant"
    assert len(s.store.load(s.id).messages) == len(s.history)


def test_reasoning_is_stored_always_and_sent_back_only_with_tools(client: DeepSeek) -> None:
    plain = ChatSession(client, model="deepseek-v4-pro")
    plain.send("first question")
    plain.send("second question")
    assert plain.history[1].message["reasoning_content"]  # stored for display
    assert not any("reasoning_content" in m for m in plain._core.plan().messages)


def test_six_tool_turns_in_thinking_mode_send_back_every_reasoning(
    client: DeepSeek, sim: Any
) -> None:
    """DeepSeek's rule (Nov 2026): with tools in thinking mode, every earlier assistant
    turn carries its reasoning_content (the simulator answers 400 otherwise)."""
    s = ChatSession(client, tools=[get_weather])
    for turn in range(6):
        question = (
            f"turn {turn}: what does get_weather say for Rome?"
            if turn % 2 == 0
            else (f"turn {turn}: thanks, and in general?")
        )
        assert s.send(question).content
        sent = s._core.plan().messages
        assistants = [m for m in sent if m["role"] == "assistant"]
        assert assistants and all("reasoning_content" in m for m in assistants)
    assert any(m.message.get("tool_calls") for m in s.history)


def test_bad_input_is_a_clear_error(client: DeepSeek) -> None:
    s = ChatSession(client)
    for bad in ("", "   ", 42):
        with pytest.raises(ValidationError, match="non-empty string"):
            s.send(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown session parameter"):
        ChatSession(client, params={"temprature": 1})
    with pytest.raises(ValidationError, match="model"):
        ChatSession(client, model="")
    for interval in (0, 5, "1"):
        with pytest.raises(ValidationError, match="save_interval"):
            ChatSession(client, save_interval=interval)  # type: ignore[arg-type]
    assert s.history == []
    with pytest.raises(ValidationError, match="temperature"):
        s.send("hi", temperature=9)
    assert s.history == [] and s.store.load(s.id).messages == []  # the question was taken back


def test_key_never_in_repr(client: DeepSeek) -> None:
    s = ChatSession(client)
    assert KEY not in repr(s) and KEY not in repr(s.store)


def test_concurrent_sessions_in_threads_share_one_store(client: DeepSeek, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    ids: list[str] = []

    def talk(n: int) -> None:
        s = ChatSession(client, store=store)
        s.send(f"thread {n}")
        ids.append(s.id)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4  # every thread finished its turn (joined: nothing left to wait for)
    assert all(len(store.load(i).messages) == 2 for i in ids)


def test_tool_round_limit_forces_an_answer(client: DeepSeek) -> None:
    params = {"tool_choice": "required", "thinking": False}  # forcing needs thinking off
    s = ChatSession(client, tools=[get_weather], max_tool_rounds=1, params=params)
    result = s.send("get_weather for Oslo")
    assert result.content
    assert [m["role"] for m in s.messages] == ["user", "assistant", "tool", "assistant"]
    assert s._core.request_params({}, 1)["tool_choice"] == "none"
    assert s._core.request_params({}, 0)["tool_choice"] == "required"


def test_a_broken_stream_keeps_the_partial_answer_and_raises(
    client: DeepSeek, any_store: SessionStore
) -> None:
    from dskit import IncompleteStreamError

    s = ChatSession(client, store=any_store, params={"thinking": False})
    with pytest.raises(IncompleteStreamError) as info:
        s.send("tell me", extra_headers={"X-Sim-Drop-After-Events": "5"}, max_resumes=0)
    stored = any_store.load(s.id).messages
    assert [(m.role, m.incomplete) for m in stored] == [("user", False), ("assistant", True)]
    assert stored[1].content == info.value.partial.content != ""
    assert s.retry().content.startswith(stored[1].content)
    assert not any_store.load(s.id).messages[1].incomplete
