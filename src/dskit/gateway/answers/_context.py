"""What answers are made with: the parts of the gateway the answers domain uses, composed
once at startup (`_compose.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from dskit.client._async import AsyncDeepSeek
from dskit.gateway._metrics import Metrics
from dskit.gateway._settings import GatewaySettings
from dskit.gateway.answers._cache import CacheFront
from dskit.gateway.answers._callbacks import CallbackSender
from dskit.gateway.answers._codec import answer_result
from dskit.gateway.backends._limits import RateLimiter
from dskit.gateway.backends._log import SharedLog, StreamLog
from dskit.gateway.backends._tool_results import ToolResults
from dskit.gateway.upstreams._pool import UpstreamPool
from dskit.gateway.upstreams._upstreams import Upstreams
from dskit.store import SessionStore


@dataclass(frozen=True, slots=True)
class AnswerContext:
    """The answer log (`fleet`: the same log when a fleet shares it, else None), the
    session store, the cache, the upstreams, callbacks, metrics, the tokens bucket and
    the mailboxes of answers paused for client-side tool results."""

    settings: GatewaySettings
    log: StreamLog
    fleet: SharedLog | None
    store: SessionStore
    cache: CacheFront
    upstreams: Upstreams
    callbacks: CallbackSender
    metrics: Metrics
    token_limiter: RateLimiter | None  # a turn's later requests (after tool results) too
    tool_results: ToolResults  # paused answers' mailboxes (shared with --redis)

    @property
    def client(self) -> AsyncDeepSeek:
        return self.upstreams.client

    @property
    def pool(self) -> UpstreamPool:
        return self.upstreams.pool

    async def send_callback(self, url: str, answer_id: str, session_id: str) -> None:
        """POST the finished answer (as the log's last event tells it) to `url`."""
        result = await answer_result(self.log, answer_id, session_id)
        await self.callbacks.deliver(url, orjson.dumps(result.model_dump(mode="json")))
