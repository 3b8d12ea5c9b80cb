"""Fitting a conversation into the model's context window: pure functions, no I/O.

The API is stateless, so every request resends the history; left alone, a long chat
grows past the window and the API refuses it. The budget is the model's window minus the
output reserved for the reply minus a safety margin. Over budget, whole turns go, oldest
first: a turn is a user message with everything that answers it (assistant replies, tool
calls and their results), so a tool call is never sent without its results. The system
message and the latest turn always stay; if even they do not fit, that is a
`ContextOverflowError`, never a request the API would refuse.

Strategies: `window` drops old turns silently, `summarize` drops them and lets the
session replace them with a model-written summary, `error` raises instead of dropping.
`max_turns` keeps at most the last N turns, and the token budget still guards.
`memory` (off by default) keeps what dropped turns named in a bounded note
(`dskit.session._memory`), whose tokens count against the budget.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dskit._models import (
    KNOWN_MODELS,
    UNKNOWN_CONTEXT_WINDOW,
    ModelInfo,
    default_max_tokens,
    migrate,
)
from dskit._tokens import count_message
from dskit._validate import is_integer
from dskit.client._errors import ContextOverflowError, ValidationError
from dskit.session._memory import EntityMemory, memory_settings

Strategy = Literal["window", "summarize", "error"]
STRATEGIES = ("window", "summarize", "error")

# A model's window comes from `GET /models` (the client's `model_info`, cached); these
# are the sheet's figures for a policy used without one (docs/sessions.md). Retired names
# read as what they became; unknown models get `default_window`.
DEFAULT_WINDOWS: dict[str, int] = {m.id: m.context_window for m in KNOWN_MODELS.values()}
UNKNOWN_WINDOW = UNKNOWN_CONTEXT_WINDOW


def _positive(name: str, value: Any, *, zero: bool = False) -> None:
    low = 0 if zero else 1
    if not is_integer(value) or value < low:
        raise ValidationError(f"{name} must be an integer >= {low}, got {value!r}", param=name)


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    """How a session fits its history into the model's window."""

    strategy: Strategy = "window"
    max_turns: int | None = None
    windows: Mapping[str, int] = field(default_factory=dict)
    default_window: int = UNKNOWN_WINDOW
    reserve_output: int | None = None
    margin: int = 512
    memory: bool | EntityMemory = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValidationError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}",
                param="strategy",
            )
        if self.max_turns is not None:
            _positive("max_turns", self.max_turns)
        for model, size in self.windows.items():
            _positive(f"windows[{model!r}]", size)
        _positive("default_window", self.default_window)
        _positive("margin", self.margin, zero=True)
        if self.reserve_output is not None:
            _positive("reserve_output", self.reserve_output, zero=True)
        memory_settings(self.memory)

    @property
    def entity_memory(self) -> EntityMemory | None:
        """The bounds of the "known so far" note, or None when memory is off."""
        return memory_settings(self.memory)

    def window(self, model: str, info: ModelInfo | None = None) -> int:
        """`windows[model]`, else what `GET /models` said (`info`), else the sheet's."""
        known = info.context_window if info else DEFAULT_WINDOWS.get(migrate(model)[0])
        return self.windows.get(model) or known or self.default_window

    def budget(
        self,
        model: str,
        max_tokens: int | None = None,
        *,
        thinking: bool = True,
        effort: str | None = None,
        info: ModelInfo | None = None,
    ) -> int:
        """Tokens the prompt may use: window - reserved output - margin. Without
        `max_tokens` the API's own default output budget is reserved (8K without
        thinking, 64K with it, 128K at effort max), never more than the model's
        largest output."""
        reserve = self.reserve_output
        if reserve is None:
            reserve = max_tokens or default_max_tokens(thinking, effort)
            if info is not None:
                reserve = min(reserve, info.max_output_tokens)
        return self.window(model, info) - reserve - self.margin


def group_turns(messages: Sequence[Mapping[str, Any]]) -> list[range]:
    """Split a history into turns: each user message starts one.

    Messages before the first user message (rare: an imported history) form a turn of
    their own, so they are dropped whole as well.
    """
    starts = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = [*starts, len(messages)]
    return [range(a, b) for a, b in itertools.pairwise(bounds) if a < b]


@dataclass(frozen=True, slots=True)
class Fit:
    """The outcome of fitting: the first kept index (a turn boundary) and the cost."""

    start: int
    tokens: int
    dropped_for_budget: bool


def fit_turns(
    costs: Sequence[int],
    turns: Sequence[range],
    *,
    fixed: int,
    budget: int,
    max_turns: int | None = None,
    strategy: Strategy = "window",
) -> Fit:
    """Keep the longest run of newest whole turns whose cost, plus `fixed`, fits `budget`.

    `fixed` is what is always sent (system message, summary). The newest turn is always
    kept: if it cannot fit, or if the `error` strategy would have to drop anything for
    the budget, this raises ContextOverflowError.
    """
    total = len(costs)
    if not turns:
        _check(fixed, budget, "the system message")
        return Fit(total, fixed, False)
    used = fixed + sum(costs[i] for i in turns[-1])
    _check(used, budget, "the system message and the latest turn")
    start = turns[-1].start
    for count, turn in enumerate(reversed(turns[:-1]), start=2):
        cost = sum(costs[i] for i in turn)
        if max_turns is not None and count > max_turns:
            return Fit(start, used, False)
        if used + cost > budget:
            if strategy == "error":
                _overflow(used + cost, budget, "the conversation")
            return Fit(start, used, True)
        used, start = used + cost, turn.start
    return Fit(start, used, False)


def _check(used: int, budget: int, what: str) -> None:
    if used > budget:
        _overflow(used, budget, what)


def _overflow(used: int, budget: int, what: str) -> None:
    raise ContextOverflowError(
        f"{what} needs about {used} tokens but the context budget is {budget} "
        "(window - reserved output - margin); shorten the input, raise the window, "
        "or use the 'window' or 'summarize' strategy"
    )


class TokenCounter:
    """Token counts that get exact as the conversation goes.

    A message starts with the tokenizer's count of it, template markers included
    (`dskit._tokens`), times this session's calibration factor: 1 until the API says
    otherwise. Each reply's `usage.prompt_tokens`, less the prompt's own overhead, is the
    exact size of the messages sent, so the messages whose size was still estimated get
    the exact remainder, spread in proportion to their estimates, and the factor becomes
    remainder / count (the API's tokenizer or template may differ from ours); from then on
    only new text is ever counted.
    """

    MIN_FACTOR = 0.25
    MAX_FACTOR = 4.0

    def __init__(self) -> None:
        self.factor = 1.0

    def estimate(self, wire: Mapping[str, Any]) -> int:
        return self._scaled(count_message(wire))

    def _scaled(self, count: int) -> int:
        return max(1, math.ceil(count * self.factor))

    def cost(self, known: int | None, wire: Mapping[str, Any]) -> int:
        return known if known is not None else self.estimate(wire)

    def attribute(
        self, known: Sequence[int | None], wires: Sequence[Mapping[str, Any]], prompt_tokens: int
    ) -> list[int]:
        """Exact counts for every sent message, given the real size of the messages
        (`prompt_tokens` less `prompt_overhead`)."""
        unknown = [i for i, k in enumerate(known) if k is None]
        counts = {i: count_message(wires[i]) for i in unknown}
        costs = [self._scaled(counts[i]) if k is None else k for i, k in enumerate(known)]
        known_total = sum(c for c, k in zip(costs, known, strict=True) if k is not None)
        remainder = prompt_tokens - known_total
        if prompt_tokens <= 0 or not costs:
            return costs
        if not unknown or remainder < len(unknown):
            return _spread(costs, range(len(costs)), prompt_tokens)
        raw = sum(counts.values())
        self.factor = min(max(remainder / max(raw, 1), self.MIN_FACTOR), self.MAX_FACTOR)
        return _spread(costs, unknown, remainder)


def _spread(costs: list[int], indices: Sequence[int], amount: int) -> list[int]:
    """Share `amount` over `indices` in proportion to their costs, at least 1 each."""
    weights = [costs[i] for i in indices]
    whole = sum(weights) or 1
    shares = [max(1, amount * w // whole) for w in weights]
    shares[-1] += amount - sum(shares)
    result = list(costs)
    for i, share in zip(indices, shares, strict=True):
        result[i] = max(1, share)
    return result
