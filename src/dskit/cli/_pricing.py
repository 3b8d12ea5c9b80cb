"""The one price table, for the cost estimate in the chat footer and `/usage`.

An ESTIMATE: prices change and DeepSeek bills what its own meter says. These are the V4
list prices of November 2026 in US dollars per million tokens (docs/cli.md links the
page). Since 2026-08-16 DeepSeek charges double in peak hours: Monday to Friday,
01:00-04:00 and 06:00-10:00 UTC (Beijing 09-12 and 14-18); everything else is off-peak.
PRC statutory holidays are off-peak too; this table does not know them, so an answer on
such a weekday is estimated at the peak price. Reasoning tokens are billed as output.
Retired names (`deepseek-chat`, `deepseek-reasoner`) and unknown models use Flash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dskit._models import migrate
from dskit._tokens import count_text
from dskit.client._types import ChatResult, Usage

PEAK_HOURS_UTC = (range(1, 4), range(6, 10))  # Monday to Friday only


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens, off-peak (peak is `PEAK_FACTOR` times these)."""

    input_cache_hit: float
    input_cache_miss: float
    output: float


PEAK_FACTOR = 2.0
FLASH = Price(input_cache_hit=0.003, input_cache_miss=0.15, output=0.60)
PRO = Price(input_cache_hit=0.022, input_cache_miss=0.66, output=1.98)
PRICES: dict[str, Price] = {
    "deepseek-flash": FLASH,
    "deepseek-v4-flash": FLASH,
    "deepseek-v4-flash-vision-exp": FLASH,
    "deepseek-v4-pro": PRO,
}


def is_peak(at: datetime) -> bool:
    """Whether DeepSeek's peak price applies at `at` (naive datetimes are taken as UTC)."""
    utc = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return utc.weekday() < 5 and any(utc.hour in hours for hours in PEAK_HOURS_UTC)


def price_for(model: str, at: datetime | None = None) -> Price:
    """The price of `model` at `at` (now when None), peak hours applied."""
    base = PRICES.get(migrate(model)[0], FLASH)
    if not is_peak(at or datetime.now(UTC)):
        return base
    return Price(
        input_cache_hit=base.input_cache_hit * PEAK_FACTOR,
        input_cache_miss=base.input_cache_miss * PEAK_FACTOR,
        output=base.output * PEAK_FACTOR,
    )


def estimate_cost(usage: Usage, model: str, at: datetime | None = None) -> float:
    """Dollars this usage costs at list price at `at` (now when None; an estimate, see
    the module docstring)."""
    price = price_for(model, at)
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
    tokens = count_text(result.content) + count_text(result.reasoning_content or "")
    if not tokens:
        return None
    return f"tokens ~{tokens} out (estimated: the usage did not arrive)"
