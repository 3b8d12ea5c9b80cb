"""Revoked keys end their open streams (one pure-ASGI middleware and one check loop).

A key is checked when a request starts; an SSE stream can then run for many minutes.
`KeyWatch` registers every event stream whose request was authenticated by a key
(`authenticate()` leaves the key in the scope under `SCOPE_KEY`); while any are open, one
loop checks each distinct key every `interval` seconds and cancels the requests of a
revoked one. The middleware then ends the stream with an error event in the stream's
own shape (a session's `event: error`, the relay's `data: {"error": ...}`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dskit.gateway._errors import GatewayError

SCOPE_KEY = "dskit.gateway_key"
EVENT_STREAM = b"text/event-stream"
REVOKED = GatewayError(
    401, "the gateway API key of this stream was revoked", "authentication_error",
    code="key_revoked",
)  # fmt: skip


@dataclass(slots=True, eq=False)
class Watched:
    key: str
    task: asyncio.Task[object]
    revoked: bool = field(default=False)


def revoked_frame(path: str) -> bytes:
    """The last event of a revoked key's stream, as that stream's clients read errors."""
    if path.startswith("/v1/sessions/"):
        data = orjson.dumps({**REVOKED.body()["error"], "status": REVOKED.status})
        return b"event: error\ndata: " + data + b"\n\n"
    return b"data: " + REVOKED.encode() + b"\n\n"


class KeyWatch:
    """Ends the event streams of keys found revoked (`still_valid(key)` false)."""

    def __init__(self, app: ASGIApp, still_valid: Callable[[str], bool], interval: float) -> None:
        self.app = app
        self.still_valid = still_valid
        self.interval = interval
        self.open: set[Watched] = set()
        self._loop: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched: list[Watched] = []

        async def watch_send(message: Message) -> None:
            if message["type"] == "http.response.start" and _is_stream(message, scope):
                watched.append(self._watch(scope[SCOPE_KEY]))
            await send(message)

        try:
            await self.app(scope, receive, watch_send)
        except asyncio.CancelledError:
            if not (watched and watched[0].revoked):
                raise
            watched[0].task.uncancel()
            await _end_stream(send, scope["path"])
        finally:
            for entry in watched:
                self.open.discard(entry)

    def _watch(self, key: str) -> Watched:
        task = asyncio.current_task()
        assert task is not None
        entry = Watched(key, task)
        self.open.add(entry)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._check_loop())
        return entry

    async def _check_loop(self) -> None:
        while self.open:
            await asyncio.sleep(self.interval)
            for key in {entry.key for entry in self.open}:
                if not await asyncio.to_thread(self.still_valid, key):
                    self._end(key)

    def _end(self, key: str) -> None:
        for entry in list(self.open):
            if entry.key == key and not entry.revoked:
                entry.revoked = True
                entry.task.cancel()


def _is_stream(message: Message, scope: Scope) -> bool:
    if SCOPE_KEY not in scope:
        return False
    return any(
        name == b"content-type" and value.startswith(EVENT_STREAM)
        for name, value in message.get("headers", ())
    )


async def _end_stream(send: Send, path: str) -> None:
    with contextlib.suppress(OSError, RuntimeError):  # the client may be gone already
        await send({"type": "http.response.body", "body": revoked_frame(path), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
