"""`UpstreamPool`: a client per upstream URL, a breaker per upstream, fallbacks in order;
`open()` returns a stream that has produced its first event, so failing over never
repeats output."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import Gauge

from dskit.client._async import AsyncDeepSeek, AsyncStream
from dskit.client._types import StreamEvent
from dskit.gateway._metrics import Metrics
from dskit.gateway.upstreams._breaker import (
    AllUpstreamsDownError,
    CircuitBreaker,
    Upstream,
    UpstreamChooser,
    is_upstream_failure,
)

logger = logging.getLogger("dskit.gateway")


class UpstreamPool:
    """Clients by base URL and the chooser that picks, in order, an upstream that is up.

    The pool owns its clients (`aclose` closes them). `on_retry` is called for each
    retry before a stream's first event (`open()` consumes those `retrying` events).
    """

    def __init__(
        self, chooser: UpstreamChooser, clients: Mapping[str | None, AsyncDeepSeek],
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.chooser = chooser
        self.clients = dict(clients)
        self.on_retry = on_retry

    async def open(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> tuple[Upstream, AsyncStream, StreamEvent | None]:
        """A stream that has produced its first event, from the first upstream that works.

        A failure before any output moves on to the next upstream (its breaker told);
        `AllUpstreamsDownError` when every breaker is open or every upstream failed.
        """
        tried: list[str] = []
        while True:
            try:
                upstream = self.chooser.next(tried)
            except AllUpstreamsDownError:
                if not tried:
                    raise
                raise AllUpstreamsDownError(self.chooser.retry_after()) from None
            tried.append(upstream.name)
            call = dict(params)
            if upstream.model:
                call["model"] = upstream.model
            stream = self.clients[upstream.base_url].stream(list(messages), **call)
            try:
                return upstream, stream, await self._first_event(stream)
            except Exception as exc:
                await stream.aclose()
                self.chooser.report(upstream, exc)
                if not is_upstream_failure(exc) or len(tried) >= len(self.chooser.upstreams):
                    raise
                logger.warning("upstream %s failed (%s); trying the next", upstream.name, exc)

    async def _first_event(self, stream: AsyncStream) -> StreamEvent | None:
        event = await anext(stream, None)
        while event is not None and event.type == "retrying":
            self.on_retry()
            event = await anext(stream, None)
        return event

    def report(self, upstream: Upstream, exc: BaseException | None) -> None:
        self.chooser.report(upstream, exc)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def breaker_gauge(metrics: Metrics, pool: UpstreamPool) -> None:
    """`dskit_gateway_upstream_open{upstream}`: 1 while that upstream's breaker is open."""
    gauge = Gauge(
        "dskit_gateway_upstream_open", "1 while the upstream's circuit breaker is open",
        ["upstream"], registry=metrics.registry,
    )  # fmt: skip
    for name, breaker in pool.chooser.breakers.items():
        gauge.labels(name).set_function(_is_open(breaker))


def _is_open(breaker: CircuitBreaker) -> Callable[[], float]:
    return lambda: float(breaker.state == "open")
