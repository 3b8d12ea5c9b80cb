"""Context fitting: properties over random conversations, and the budget arithmetic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dskit import ContextOverflowError, ValidationError
from dskit._tokens import count_message
from dskit.session._context import (
    ContextPolicy,
    Fit,
    Strategy,
    TokenCounter,
    fit_turns,
    group_turns,
)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Histories with tool rounds: user, (assistant tool_calls, tool results)*, answer?"""
    messages: list[dict[str, Any]] = []
    call = 0
    if draw(st.booleans()) and draw(st.booleans()):
        messages.append({"role": "assistant", "content": "orphan preamble"})
    for _ in range(draw(st.integers(1, 8))):
        messages.append({"role": "user", "content": "q"})
        for _ in range(draw(st.integers(0, 2))):
            ids = [f"c{call + k}" for k in range(draw(st.integers(1, 3)))]
            call += len(ids)
            calls = [{"id": i, "type": "function", "function": {"name": "f"}} for i in ids]
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            messages.extend({"role": "tool", "tool_call_id": i, "content": "r"} for i in ids)
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": "a"})
    return messages


def tool_pairs_intact(kept: list[dict[str, Any]]) -> bool:
    called = {c["id"] for m in kept for c in m.get("tool_calls", [])}
    answered = {m["tool_call_id"] for m in kept if m["role"] == "tool"}
    return called == answered


@settings(max_examples=300, deadline=None)
@given(
    messages=conversations(),
    data=st.data(),
    fixed=st.integers(0, 200),
    budget=st.integers(0, 4000),
    max_turns=st.none() | st.integers(1, 6),
    strategy=st.sampled_from(["window", "summarize", "error"]),
)
def test_fit_properties(
    messages: list[dict[str, Any]],
    data: st.DataObject,
    fixed: int,
    budget: int,
    max_turns: int | None,
    strategy: Strategy,
) -> None:
    costs = data.draw(st.lists(st.integers(1, 300), min_size=len(messages), max_size=len(messages)))
    turns = group_turns(messages)
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    need = fixed + sum(costs[last_user:])
    try:
        fit = fit_turns(
            costs, turns, fixed=fixed, budget=budget, max_turns=max_turns, strategy=strategy
        )
    except ContextOverflowError as exc:
        assert "budget" in str(exc)
        assert need > budget or (strategy == "error" and fixed + sum(costs) > budget)
        return
    kept = messages[fit.start :]
    assert fit.tokens == fixed + sum(costs[fit.start :]) <= budget  # never over budget
    assert fit.start <= last_user  # the latest user message is always kept
    assert fit.start in {t.start for t in turns}  # whole turns only
    assert tool_pairs_intact(kept)  # never a tool call without its results
    if max_turns is not None:
        assert sum(1 for m in kept if m["role"] == "user") <= max_turns
    if fit.start > 0 and max_turns is None:  # dropping only when needed
        previous = next(t for t in turns if t.stop == fit.start)
        assert fit.tokens + sum(costs[i] for i in previous) > budget
        assert fit.dropped_for_budget and strategy != "error"


def test_group_turns_keeps_tool_rounds_in_their_turn() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "a"}]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "thanks"},
    ]
    assert group_turns(messages) == [range(4), range(4, 5)]
    assert group_turns([]) == []
    assert group_turns([{"role": "assistant"}, {"role": "user"}]) == [range(1), range(1, 2)]


def test_window_drops_oldest_turns_first() -> None:
    turns = [range(2), range(2, 4), range(4, 5)]
    fit = fit_turns([10, 10, 10, 10, 10], turns, fixed=5, budget=40)
    assert fit == Fit(start=2, tokens=35, dropped_for_budget=True)


def test_error_strategy_raises_a_clear_error() -> None:
    turns = [range(2), range(2, 3)]
    with pytest.raises(ContextOverflowError, match=r"needs about 35 tokens .* budget is 30"):
        fit_turns([10, 10, 10], turns, fixed=5, budget=30, strategy="error")


def test_latest_turn_that_cannot_fit_is_an_overflow_whatever_the_strategy() -> None:
    with pytest.raises(ContextOverflowError, match="latest turn"):
        fit_turns([50], [range(1)], fixed=10, budget=40)


def test_policy_budget_uses_window_reserve_and_margin() -> None:
    policy = ContextPolicy()
    window = 1048576  # both V4 models
    assert policy.budget("deepseek-flash") == window - 65536 - 512  # thinking on: 64K out
    assert policy.budget("deepseek-flash", thinking=False) == window - 8192 - 512
    assert policy.budget("deepseek-v4-pro", effort="max") == window - 131072 - 512
    assert policy.budget("deepseek-flash", max_tokens=1000) == window - 1000 - 512
    assert policy.budget("deepseek-chat", thinking=False) == window - 8192 - 512  # migrated
    assert policy.budget("some-new-model", thinking=False) == 65536 - 8192 - 512
    custom = ContextPolicy(windows={"deepseek-flash": 8000}, reserve_output=1000, margin=0)
    assert custom.budget("deepseek-flash", max_tokens=4000) == 7000


@pytest.mark.parametrize(
    "bad",
    [
        {"strategy": "truncate"},
        {"max_turns": 0},
        {"margin": -1},
        {"windows": {"m": 0}},
        {"reserve_output": "lots"},
    ],
)
def test_policy_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ContextPolicy(**bad)


def test_counter_calibrates_from_real_usage() -> None:
    counter = TokenCounter()
    system = {"role": "system", "content": "You answer in one short sentence."}
    user = {"role": "user", "content": "What is a context window?"}
    wires = [system, user]
    counts = [count_message(w) for w in wires]  # the tokenizer's, template markers included
    assert [counter.estimate(w) for w in wires] == counts
    exact = counter.attribute([None, None], wires, prompt_tokens=2 * sum(counts))
    assert exact == [2 * c for c in counts] and counter.factor == 2.0
    # Known counts stay as they are; only the new message is attributed.
    wires.append({"role": "assistant", "content": "The tokens a model sees at once."})
    reply = count_message(wires[2])
    known = [*exact, None]
    assert counter.attribute(known, wires, sum(exact) + reply) == [*exact, reply]
    assert counter.factor == 1.0
    # Known counts that turn out too big are scaled down to the real total.
    assert sum(counter.attribute([*exact, reply], wires, prompt_tokens=10)) == 10
    assert counter.estimate(user) == counts[1]
