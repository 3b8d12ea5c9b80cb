"""A streaming response that writes as its body produces, and stops on disconnect.

The body is a producer: an async function that writes its pieces through the `send` it
is given (`pieces()` makes one of an iterator of bytes, sync or async; the relay is one,
writing what arrived in one upstream read as one piece, with no generator between it
and the socket). It runs in its own task; a second task waits for `http.disconnect`, so
a client that leaves stops the body (for the relay, that closes the upstream request; a
session answer runs on in its own task).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
Producer = Callable[[Send], Awaitable[None]]


def body_message(data: bytes) -> Message:
    """One piece of a streamed body, as ASGI sends it."""
    return {"type": "http.response.body", "body": data, "more_body": True}


def pieces(body: AsyncIterator[bytes] | Iterable[bytes]) -> Producer:
    """A producer writing each piece an iterator yields, at once; an async iterator is
    closed when it ends, fails or is cancelled."""

    async def produce(send: Send) -> None:
        if isinstance(body, Iterable):
            for piece in body:
                await send(body_message(piece))
            return
        try:
            async for piece in body:
                await send(body_message(piece))
        finally:
            closer = getattr(body, "aclose", None)
            if closer is not None:  # also when cancelled while the body was not running
                await closer()

    return produce


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, produce: Producer, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})  # no body: no Content-Length
        self.produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        writer = asyncio.create_task(self._write(send))
        watcher = asyncio.create_task(self._watch(receive, writer))
        try:
            await writer
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise  # cancelled from outside, not by the client leaving
        finally:
            for task in (watcher, writer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _write(self, send: Send) -> None:
        await self.produce(send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch(receive: Receive, writer: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        writer.cancel()
