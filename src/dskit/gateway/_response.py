"""A streaming response that coalesces what is ready into one write, and stops on disconnect.

The body is produced by its own task into a buffer; the writer sends everything buffered
at once. A slow upstream (one token per wake-up) costs one write per token as before; a
fast one no longer costs one write (and one trip through every middleware) per chunk.
A second task waits for `http.disconnect`, so a client that leaves stops the body (for
the relay, that closes the upstream request; a session answer runs on in its own task).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})  # no body: no Content-Length
        self.body_iterator = body
        self._buffer: list[bytes] = []
        self._ready = asyncio.Event()
        self._finished = False

    async def _produce(self) -> None:
        buffer, ready = self._buffer, self._ready
        try:
            async for chunk in self.body_iterator:
                buffer.append(chunk)
                ready.set()
        finally:
            self._finished = True
            ready.set()

    async def _watch(self, receive: Receive, producer: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        producer.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        producer = asyncio.create_task(self._produce())
        watcher = asyncio.create_task(self._watch(receive, producer))
        try:
            await self._write(send)
        finally:
            watcher.cancel()
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _write(self, send: Send) -> None:
        buffer, ready = self._buffer, self._ready
        while True:
            if not buffer:
                if self._finished:
                    break
                await ready.wait()
                ready.clear()
                continue
            data = b"".join(buffer)
            buffer.clear()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
