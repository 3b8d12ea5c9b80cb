"""A streaming response that writes as its body produces, and stops on disconnect.

The body runs in its own task and each piece it yields is written at once (a producer
that has several pieces ready joins them first: the relay yields what arrived in one
upstream read as one piece). A second task waits for `http.disconnect`, so a client that
leaves stops the body (for the relay, that closes the upstream request; a session answer
runs on in its own task).
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
        body = self.body_iterator
        try:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            closer = getattr(body, "aclose", None)
            if closer is not None:  # also when cancelled while the body was not running
                await closer()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch(receive: Receive, writer: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        writer.cancel()
