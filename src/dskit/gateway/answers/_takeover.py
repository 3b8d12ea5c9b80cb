"""Taking over answers whose instance died, and continuing them upstream.

The instance that starts an answer stores a `TakeoverJob` with it (the conversation as
sent upstream, model, parameters, pass-through headers). When that instance dies its
lease lapses; every instance's `TakeoverLoop` looks for such orphans, one wins the lease,
reads the text logged so far and continues it upstream with the client's
`AsyncDeepSeek.continue_stream` (Chat Prefix Completion, the client's own resume; the
continuation's breaks are resumed like any stream's).
The new events are appended after the last logged one, so a client resuming with
`Last-Event-ID` on any instance reads the whole answer once: no gap, no repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from dskit.client._async import AsyncDeepSeek
from dskit.client._types import (
    ChatResult,
    ContentDelta,
    ReasoningDelta,
    StreamEvent,
    Usage,
    UsageEvent,
)
from dskit.gateway.answers._sources import ReplaySource, StreamSource
from dskit.gateway.backends._log import PartialAnswer, SharedLog
from dskit.gateway.backends._redis_log import stop_if_cancelled

logger = logging.getLogger("dskit.gateway")


@dataclass(frozen=True, slots=True)
class TakeoverJob:
    """What another instance needs to continue an answer (no keys: headers are X-Sim-*)."""

    session_id: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    callback_url: str | None = None
    history: int = 0  # stored messages when the answer started (to spot it saved already)

    def encode(self) -> bytes:
        return orjson.dumps(
            {"session_id": self.session_id, "model": self.model, "messages": self.messages,
             "params": self.params, "headers": self.headers, "callback_url": self.callback_url,
             "history": self.history}
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> TakeoverJob:
        data = orjson.loads(raw)
        return cls(
            session_id=str(data["session_id"]), model=str(data["model"]),
            messages=list(data["messages"]), params=dict(data.get("params") or {}),
            headers=dict(data.get("headers") or {}), callback_url=data.get("callback_url"),
            history=int(data.get("history") or 0),
        )  # fmt: skip


class PrefixContinuation(StreamSource):
    """The rest of an answer as stream events, continued from `partial` by the client's
    `continue_stream` (its own breaks resumed the same way, up to `max_resumes` times);
    `final()` is the whole answer, the logged start included."""

    def __init__(
        self, client: AsyncDeepSeek, job: TakeoverJob, partial: PartialAnswer, max_resumes: int = 3
    ) -> None:
        params = {k: v for k, v in job.params.items() if k != "model"}
        self.stream = client.continue_stream(
            job.messages, partial.content, reasoning=partial.reasoning or None,
            pieces=partial.pieces, model=job.model, extra_headers=dict(job.headers),
            max_resumes=max_resumes, **params,
        )  # fmt: skip

    def events(self) -> AsyncIterator[StreamEvent]:
        return self.stream


class RemainderSource(ReplaySource):
    """An answer its instance saved but did not finish logging: the rest of the saved
    text is logged, and it is not saved a second time."""

    cached = False
    saved = True

    def __init__(self, saved: ChatResult, partial: PartialAnswer) -> None:
        super().__init__(saved)
        self.partial = partial

    async def events(self) -> AsyncIterator[StreamEvent]:
        reasoning = (self.result.reasoning_content or "")[len(self.partial.reasoning) :]
        if reasoning:
            yield ReasoningDelta(reasoning)
        content = self.result.content[len(self.partial.content) :]
        if content:
            yield ContentDelta(content)
        if self.result.usage is not None:
            yield UsageEvent(self.result.usage)


def saved_answer(job: TakeoverJob, stored: list[Any], partial: PartialAnswer) -> ChatResult | None:
    """The answer as its instance saved it before dying, if it did (and it extends the log)."""
    if len(stored) <= job.history or stored[-1].role != "assistant" or stored[-1].incomplete:
        return None  # (an incomplete turn: cut off, or paused for tool results)
    message = stored[-1].message
    if message.get("tool_calls"):
        return None
    content = message.get("content") or ""
    if not isinstance(content, str) or not content.startswith(partial.content):
        return None
    usage = stored[-1].usage
    return ChatResult(
        content=content, reasoning_content=message.get("reasoning_content"),
        finish_reason="stop", usage=Usage.from_dict(usage) if usage else None,
    )  # fmt: skip


class TakeoverLoop:
    """Every `interval` seconds: find orphaned answers, take their lease, continue them."""

    def __init__(
        self,
        log: SharedLog,
        worker: str,
        adopt: Callable[[str], Awaitable[None]],
        interval: float = 1.0,
    ) -> None:
        self.log = log
        self.worker = worker
        self.adopt = adopt
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> list[str]:
        """One pass; returns the answers this instance took over."""
        taken = []
        for answer_id in await self.log.orphans():
            with contextlib.suppress(LookupError):
                if await self.log.lease(answer_id, self.worker, self.log.lease_ttl):
                    taken.append(answer_id)
                    await self.adopt(answer_id)
        return taken

    async def _run(self) -> None:
        while True:
            try:
                taken = await self.tick()
                stop_if_cancelled()  # redis-py may have swallowed stop()'s cancel
                if taken:
                    logger.warning("took over %d answer(s) of a lost instance", len(taken))
            except Exception as exc:  # Redis down: try again next round
                logger.warning("takeover scan failed: %s", exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="takeover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def job_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Only pass-through headers travel with a job (never an Authorization header)."""
    return {k: v for k, v in headers.items() if k.lower().startswith("x-sim-")}
