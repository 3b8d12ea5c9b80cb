"""Taking over answers whose instance died, and continuing them upstream.

The instance that starts an answer stores a `TakeoverJob` with it (the conversation as
sent upstream, model, parameters, pass-through headers). When that instance dies its
lease lapses; every instance's `TakeoverLoop` looks for such orphans, one wins the lease,
reads the text logged so far and continues upstream through Chat Prefix Completion: the
conversation plus `{"role": "assistant", "content": <text so far>, "prefix": true}` sent
to the beta endpoint, the same shape `dskit.client` uses to resume its own broken streams.
The new events are appended after the last logged one, so a client resuming with
`Last-Event-ID` on any instance reads the whole answer once: no gap, no repeat.

The continuation resumes its own breaks the same way (from the text it has so far), which
is why it runs the client with `max_resumes=0`: the client's resume would stack a second
prefix message behind ours.
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
from dskit.client._driver import prefix_message
from dskit.client._errors import IncompleteStreamError
from dskit.client._types import (
    ChatResult,
    ContentDelta,
    ReasoningDelta,
    StreamEvent,
    Usage,
    UsageEvent,
)
from dskit.gateway._redis_log import PartialAnswer, RedisStreamLog
from dskit.gateway._scale import ReplaySource

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


def beta_client_url(base_url: str) -> str:
    """The base URL under which `/chat/completions` is the beta (prefix) endpoint."""
    return base_url.rstrip("/").removesuffix("/v1") + "/beta"


def prefix_messages(job: TakeoverJob, content: str, reasoning: str) -> list[dict[str, Any]]:
    """The conversation plus the answer so far as a prefix (the client's resume shape)."""
    return [*job.messages, prefix_message(job.model, content, reasoning)]


class PrefixContinuation:
    """The rest of an answer as stream events, continued from `partial` through prefix
    completion; its own breaks are continued the same way, up to `max_resumes` times."""

    cached = False

    def __init__(
        self, beta: AsyncDeepSeek, job: TakeoverJob, partial: PartialAnswer, max_resumes: int = 3
    ) -> None:
        self.beta = beta
        self.job = job
        self.content = partial.content
        self.reasoning = partial.reasoning
        self.pieces = partial.pieces
        self.max_resumes = max_resumes
        self.resumes = 0
        self.usage: Usage | None = None
        self.result: ChatResult | None = None

    async def events(self) -> AsyncIterator[StreamEvent]:
        while True:
            try:
                async for event in self._attempt():
                    yield event
                return
            except IncompleteStreamError as exc:
                self.resumes += 1
                if self.resumes > self.max_resumes:
                    raise
                logger.warning("continuation broke (%s); continuing again", exc)

    async def _attempt(self) -> AsyncIterator[StreamEvent]:
        messages = prefix_messages(self.job, self.content, self.reasoning)
        params = {k: v for k, v in self.job.params.items() if k != "model"}
        if "max_tokens" in params:  # what came already counts, as in the client's resume
            params["max_tokens"] = max(1, params["max_tokens"] - self.pieces)
        stream = self.beta.stream(
            messages, model=self.job.model, extra_headers=dict(self.job.headers),
            max_resumes=0, **params,
        )  # fmt: skip
        async with stream:
            async for event in stream:
                if event.type == "content":
                    self.content += event.text
                    self.pieces += 1
                elif event.type == "reasoning":
                    self.reasoning += event.text
                    self.pieces += 1
                elif event.type == "usage":  # every attempt's usage counts
                    self.usage = event.usage if self.usage is None else self.usage + event.usage
                elif event.type == "done":
                    self.result = self._merged(event.result)
                    continue
                yield event

    async def final(self) -> ChatResult:
        if self.result is None:
            raise RuntimeError("the continuation has not finished")
        return self.result

    def snapshot(self) -> ChatResult:
        return ChatResult(content=self.content, reasoning_content=self.reasoning or None)

    async def aclose(self) -> None:
        return None

    def _merged(self, tail: ChatResult) -> ChatResult:
        """The whole answer: the logged prefix and the continuation as one result."""
        return ChatResult(
            content=self.content, reasoning_content=self.reasoning or tail.reasoning_content,
            tool_calls=tail.tool_calls, finish_reason=tail.finish_reason,
            usage=self.usage, id=tail.id, model=tail.model, created=tail.created,
            system_fingerprint=tail.system_fingerprint, resumes=self.resumes + 1,
        )  # fmt: skip


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
    if len(stored) <= job.history or stored[-1].role != "assistant":
        return None
    message = stored[-1].message
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
        log: RedisStreamLog,
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
                if await self.log.lease(answer_id, self.worker, self.log.settings.lease_ttl):
                    taken.append(answer_id)
                    await self.adopt(answer_id)
        return taken

    async def _run(self) -> None:
        while True:
            try:
                taken = await self.tick()
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
