"""The HTTP side of `CredentialWatch` (`access/_watch.py`): event streams end when their
key is revoked or their token expires.

`StreamWatch` registers every event stream whose request carried a gateway key
(`identify()` leaves it in the scope under `SCOPE_KEY`) or a token (the caller in the
scope has `valid_until`). When the watch ends one, the middleware ends the stream with
an error event in the stream's own shape (a session's `event: error`, the relay's
`data: {"error": ...}`).
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dskit.gateway._errors import GatewayError
from dskit.gateway.access._matrix import Caller
from dskit.gateway.access._watch import CredentialWatch, Watched
from dskit.gateway.edge._deps import SCOPE_CALLER

SCOPE_KEY = "dskit.gateway_key"
EVENT_STREAM = b"text/event-stream"


def ended_frame(path: str, error: GatewayError) -> bytes:
    """The last event of an ended stream, as that stream's clients read errors."""
    if path.startswith("/v1/sessions/"):
        data = orjson.dumps({**error.body()["error"], "status": error.status})
        return b"event: error\ndata: " + data + b"\n\n"
    return b"data: " + error.encode() + b"\n\n"


class StreamWatch:
    """Ends the event streams whose credential `watch` finds ended."""

    def __init__(self, app: ASGIApp, watch: CredentialWatch) -> None:
        self.app = app
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched: list[Watched] = []

        async def watch_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry = self._register(scope, message)
                if entry is not None:
                    watched.append(entry)
            await send(message)

        try:
            await self.app(scope, receive, watch_send)
        except asyncio.CancelledError:
            ended = watched[0].ended if watched else None
            if ended is None:
                raise
            watched[0].task.uncancel()
            await _end_stream(send, scope["path"], ended)
        finally:
            for entry in watched:
                self.watch.open.discard(entry)

    def _register(self, scope: Scope, start: Message) -> Watched | None:
        """Watch a response that is an event stream of a key or a token (a request with
        neither, as every request when auth is off, costs one dict lookup or two)."""
        key, until = _credential(scope)
        if (key is None and until is None) or not _is_stream(start):
            return None
        return self.watch.register(key, until)


def _credential(scope: Scope) -> tuple[str | None, float | None]:
    caller: Caller | None = scope.get(SCOPE_CALLER)
    return scope.get(SCOPE_KEY), caller.valid_until if caller is not None else None


def _is_stream(message: Message) -> bool:
    return any(
        name == b"content-type" and value.startswith(EVENT_STREAM)
        for name, value in message.get("headers", ())
    )


async def _end_stream(send: Send, path: str, error: GatewayError) -> None:
    with contextlib.suppress(OSError, RuntimeError):  # the client may be gone already
        await send(
            {"type": "http.response.body", "body": ended_frame(path, error), "more_body": True}
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
