"""Where an answer's events come from: a live upstream stream or a cached answer (the
takeover's continuations are in `_takeover.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from dskit.client._async import AsyncStream
from dskit.client._types import ChatResult, StreamEvent
from dskit.gateway.backends._cache import replay_events
from dskit.gateway.upstreams._breaker import Upstream, is_upstream_failure
from dskit.gateway.upstreams._pool import UpstreamPool


class AnswerSource(Protocol):
    """The events of one answer and its final result: upstream, cache or a continuation."""

    cached: bool  # replayed from the cache
    saved: bool  # already in the session store (nothing to save when it ends)

    def events(self) -> AsyncIterator[StreamEvent]: ...
    async def final(self) -> ChatResult: ...
    def snapshot(self) -> ChatResult: ...
    async def aclose(self) -> None: ...


class StreamSource:
    """A source reading a client stream (`self.stream`): its final and partial result,
    and closing it."""

    cached = False
    saved = False
    stream: AsyncStream

    async def final(self) -> ChatResult:
        return await self.stream.final()

    def snapshot(self) -> ChatResult:
        return self.stream.snapshot()

    async def aclose(self) -> None:
        await self.stream.aclose()


class UpstreamSource(StreamSource):
    """A live upstream stream (its first event already read by `UpstreamPool.open`);
    tells the upstream's breaker how the stream ended."""

    def __init__(
        self, pool: UpstreamPool, upstream: Upstream, stream: AsyncStream, first: StreamEvent | None
    ) -> None:
        self.pool, self.upstream, self.stream, self.first = pool, upstream, stream, first

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            if self.first is not None:
                yield self.first
            async for event in self.stream:
                yield event
        except Exception as exc:
            self.ended(exc)
            raise
        self.ended(None)

    def ended(self, exc: BaseException | None) -> None:
        """Tell the upstream's breaker how the answer ended: whole (the upstream is up) or
        broken by an upstream failure (a request error says nothing about the upstream).
        For readers that take `stream` directly rather than `events()`."""
        if exc is None or is_upstream_failure(exc):
            self.pool.report(self.upstream, exc)


class ReplaySource:
    """A cached answer replayed as events."""

    cached = True
    saved = False

    def __init__(self, result: ChatResult) -> None:
        self.result = result

    async def events(self) -> AsyncIterator[StreamEvent]:
        for event in replay_events(self.result):
            if event.type != "done":
                yield event

    async def final(self) -> ChatResult:
        return self.result

    def snapshot(self) -> ChatResult:
        return self.result

    async def aclose(self) -> None:
        return None
