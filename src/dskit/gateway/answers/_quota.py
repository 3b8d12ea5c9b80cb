"""Tokens per minute: a request's estimated prompt tokens taken from its principal's bucket."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dskit.gateway._errors import GatewayError
from dskit.gateway.backends._limits import RateLimiter


async def charge_tokens(
    limiter: RateLimiter | None, who: str, messages: Sequence[Mapping[str, Any]]
) -> None:
    """Take the request's estimated prompt tokens from the principal's tokens bucket."""
    if limiter is None:
        return
    from dskit._tokens import estimate_messages_tokens
    from dskit.gateway.backends._redis_limit import CostTooHighError

    cost = float(estimate_messages_tokens(messages))
    try:
        wait = await limiter.acquire(who, cost)
    except CostTooHighError as exc:
        raise GatewayError(
            429, str(exc), "rate_limit_error", code="tokens_limit_exceeded"
        ) from None
    if wait > 0:
        raise GatewayError(
            429, f"token rate limit reached for this key (~{cost:.0f} tokens); retry later",
            "rate_limit_error", code="tokens_rate_limited", retry_after=wait,
        )  # fmt: skip
