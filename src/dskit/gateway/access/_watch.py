"""Open streams end when their credential does: a gateway key revoked, a token expired.

A credential is checked when a request starts; a stream can then run for many minutes.
Every long-lived stream (SSE, WebSocket, gRPC) registers here while it is open
(`watching()`). One loop per gateway, running while any stream is registered, checks
every `interval` seconds each token's end (its `exp` plus its issuer's leeway, on the
token clock) and each distinct gateway key (in a worker thread: a key backend's lookups
block). The streams of a credential that no longer holds are ended:
`Watched.ended` tells the stream's own code which error to send, in its own shape (an SSE
`error` event, a WebSocket error frame, a gRPC status), and their task is cancelled,
unless the stream looks at `ended` itself between its reads (`cancel=False`: a
generator, whose task is its consumer's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dskit.gateway._errors import GatewayError

KEY_REVOKED = GatewayError(
    401, "the gateway API key of this stream was revoked", "authentication_error",
    code="key_revoked",
)  # fmt: skip
TOKEN_EXPIRED = GatewayError(
    401, "the token of this stream has expired; sign in again", "authentication_error",
    code="token_expired",
)  # fmt: skip


@dataclass(slots=True, eq=False)
class Watched:
    """One open stream: its key (None for a token's) and its token's end (None for a key's)."""

    key: str | None
    until: float | None
    task: asyncio.Task[object]
    cancel: bool = True
    ended: GatewayError | None = field(default=None)


class CredentialWatch:
    """Ends the streams of revoked keys (`still_valid(key)` false) and expired tokens."""

    def __init__(
        self, still_valid: Callable[[str], bool], interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.still_valid = still_valid
        self.interval = interval
        self.clock = clock
        self.open: set[Watched] = set()
        self._loop: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(
        self, key: str | None, until: float | None, *, cancel: bool = True
    ) -> Iterator[Watched | None]:
        """Register the current task's stream while the block runs (None: nothing to
        watch, neither a key nor a token's end)."""
        entry = self.register(key, until, cancel=cancel)
        try:
            yield entry
        finally:
            if entry is not None:
                self.open.discard(entry)

    def register(
        self, key: str | None, until: float | None, *, cancel: bool = True
    ) -> Watched | None:
        """`watching()` without the block: the caller discards the entry from `open`."""
        if key is None and until is None:
            return None
        task = asyncio.current_task()
        assert task is not None
        entry = Watched(key, until, task, cancel)
        self.open.add(entry)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._check_loop())
        return entry

    async def _check_loop(self) -> None:
        while self.open:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        """One pass over the open streams."""
        now = self.clock()
        for entry in list(self.open):
            if entry.until is not None and now >= entry.until:
                _end(entry, TOKEN_EXPIRED)
        for key in {entry.key for entry in self.open if entry.key is not None}:
            if not await asyncio.to_thread(self.still_valid, key):
                for entry in list(self.open):
                    if entry.key == key:
                        _end(entry, KEY_REVOKED)


def _end(entry: Watched, error: GatewayError) -> None:
    if entry.ended is None:
        entry.ended = error
        if entry.cancel:
            entry.task.cancel()
