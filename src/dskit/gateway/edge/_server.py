"""The gateway's HTTP server edge: uvicorn's httptools protocol with a bounded request head.

httptools (llhttp) takes a head of any size and any duration: one client sending a 100 MB
header costs the server 200 MB and seconds of CPU before any route runs, and a client
dripping a head byte by byte holds a connection forever. `HeadLimitedProtocol` counts
the bytes of the head in progress (431 once past `max_head_bytes`) and closes a
connection whose head is not complete within `head_timeout` seconds of its first byte
being awaited (the connection opening, or the previous response ending).

h11 (`h11_max_incomplete_event_size`) bounds the size too, but parses in pure Python on
every request; this keeps the C parser on the fast path and adds a counter and a timer.
`server_options(settings)` is what `dskit serve` and the tests hand to uvicorn. WebSocket
upgrades (`/v1/sessions/{id}/ws`) pass through the same head limits, then go to uvicorn's
sans-I/O `websockets` protocol, whose sends wait while the socket's buffer is full (the
backpressure the flow control of `_flow.py` builds on); a frame is at most
`max_body_bytes`. Each HTTP request's scope carries its connection's unsent-bytes probe
(`SCOPE_UNSENT`, `_unsent.py`): what SSE flow control measures a client's pace by.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dskit.gateway._errors import GatewayError
from dskit.gateway.edge._unsent import SCOPE_UNSENT, Probe, unsent_probe

if TYPE_CHECKING:
    from dskit.gateway._settings import GatewaySettings


class HeadLimitedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size limit and a deadline on each request head."""

    max_head_bytes = 64 * 1024
    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_seen = 0
        self._unsent: Probe | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._unsent = unsent_probe(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_seen += len(data)
        super().data_received(data)  # the head may complete in here (on_headers_complete)
        if self._head_timer is not None and self._head_seen > self.max_head_bytes:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._head_done()
        if self._unsent is not None:  # what SSE flow control reads (`_unsent.py`)
            self.scope[SCOPE_UNSENT] = self._unsent  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()  # the next request on this connection

    def _await_head(self) -> None:
        self._head_done()
        self._head_seen = 0
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self._head_done()
        if self.transport.is_closing():
            return
        error = GatewayError(
            431, f"request head too large (limit {self.max_head_bytes} bytes)",
            code="request_header_fields_too_large",
        )  # fmt: skip
        body = error.encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json"
            b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body
        )  # fmt: skip
        self.transport.close()


def head_limited_protocol(max_head_bytes: int, head_timeout: float) -> type[HeadLimitedProtocol]:
    """The protocol class with these limits (uvicorn instantiates it per connection)."""
    return type(
        "HeadLimitedProtocol", (HeadLimitedProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )  # fmt: skip


KEEP_ALIVE_SECONDS = 20.0


def server_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn options every gateway server runs with (`uvicorn.run(app, **these)`)."""
    return {
        "http": head_limited_protocol(settings.max_head_bytes, settings.head_timeout_seconds),
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_body_bytes,
        # longer than clients keep an idle connection (httpx and the openai SDK: 5 s, as
        # uvicorn's default): else a client reusing one as the server closes it is reset
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    }
