"""The one price table, for the cost estimate in the chat footer and `/usage`.

An ESTIMATE: prices change and DeepSeek bills what its own meter says. These are the
V3.2 list prices in US dollars per million tokens (cache hits are about 10x cheaper than
misses; reasoning tokens are billed as output). Unknown models use the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from dskit._tokens import estimate_tokens
from dskit.client._types import ChatResult, Usage


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_cache_hit: float
    input_cache_miss: float
    output: float


V32 = Price(input_cache_hit=0.028, input_cache_miss=0.28, output=0.42)
PRICES: dict[str, Price] = {
    "deepseek-chat": V32,
    "deepseek-reasoner": V32,
}


def price_for(model: str) -> Price:
    return PRICES.get(model, V32)


def estimate_cost(usage: Usage, model: str) -> float:
    """Dollars this usage costs at list price (an estimate, see the module docstring)."""
    price = price_for(model)
    miss = usage.prompt_cache_miss_tokens
    if usage.prompt_cache_hit_tokens + miss < usage.prompt_tokens:
        miss = usage.prompt_tokens - usage.prompt_cache_hit_tokens  # server did not split
    total = (
        usage.prompt_cache_hit_tokens * price.input_cache_hit
        + miss * price.input_cache_miss
        + usage.completion_tokens * price.output
    )
    return total / 1_000_000


def format_cost(dollars: float) -> str:
    if dollars == 0:
        return "$0"
    if dollars < 0.0001:
        return "<$0.0001"
    return f"${dollars:.4f}"


def footer(usage: Usage, model: str) -> str:
    """`tokens 120 in (64 cached) / 48 out · ~$0.0001`: the line under each answer."""
    cached = f" ({usage.prompt_cache_hit_tokens} cached)" if usage.prompt_cache_hit_tokens else ""
    thinking = f", {usage.reasoning_tokens} thinking" if usage.reasoning_tokens else ""
    cost = format_cost(estimate_cost(usage, model))
    return (
        f"tokens {usage.prompt_tokens} in{cached} / {usage.completion_tokens} out{thinking}"
        f" · ~{cost} (estimate)"
    )


def estimated_footer(result: ChatResult) -> str | None:
    """The footer of an answer whose usage never arrived (stopped early): its output
    tokens, estimated from its text and marked so; None when nothing arrived."""
    tokens = estimate_tokens(result.content) + estimate_tokens(result.reasoning_content or "")
    if not tokens:
        return None
    return f"tokens ~{tokens} out (estimated: the usage did not arrive)"
