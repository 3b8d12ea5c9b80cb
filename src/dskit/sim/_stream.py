"""Writing responses over ASGI: timing, keep-alives, and faults that shape the bytes.

Everything is decided before the first write: the list of events, where the stream
pauses, where it breaks. With no latency the whole stream goes out in one ASGI send, which
is what makes tens of thousands of events per second possible on one core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dskit.sim._faults import Controls

Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class StreamEncoder(Protocol):
    """What shaping needs from a format's stream encoder.

    `LEAD`: events sent together at the first token; `TAIL`: trailing events that close
    the stream (no token delay); `malformed()`: an event with broken JSON.
    """

    @property
    def LEAD(self) -> int: ...

    @property
    def TAIL(self) -> int: ...

    def malformed(self) -> bytes: ...


class Abort(Exception):
    """Raised to break the connection on purpose: the server closes it unfinished."""


@dataclass(frozen=True, slots=True)
class Timing:
    """Delays of one response, in seconds."""

    ttft: float = 0.0
    token: float = 0.0
    queue: float = 0.0
    keepalive: float = 0.1
    stall_after: int | None = None
    stall: float = 0.0

    @property
    def idle(self) -> bool:
        return not (self.ttft or self.token or self.queue or self.stall)


@dataclass(slots=True)
class Shaped:
    """The events to write, how many go out together at the first token (`lead`) and
    how many trailing ones need no token delay (`tail`), and the break."""

    events: list[bytes]
    lead: int
    tail: int
    abort: bool = False
    drop_bytes: int | None = None


def shape(encoder: StreamEncoder, events: list[bytes], controls: Controls) -> Shaped:
    """Apply the stream faults (malformed, no [DONE], early end, drop) to the events.

    `no_done` drops the last event: `[DONE]` in chat, the terminal event in other formats.
    """
    pieces_end = len(events) - encoder.TAIL
    if controls.malformed_at and controls.malformed_at <= len(events):
        events[controls.malformed_at - 1] = encoder.malformed()
    if controls.no_done:
        events.pop()
    abort = False
    if controls.end_after_events is not None:
        events = events[: controls.end_after_events]
    if controls.drop_after_events is not None:
        events = events[: controls.drop_after_events]
        abort = True
    drop = controls.drop_after_bytes
    tail = max(0, len(events) - pieces_end)
    return Shaped(events, encoder.LEAD, tail, abort or drop is not None, drop)


def groups(count: int, lead: int, tail: int, timing: Timing) -> list[tuple[float, int, int]]:
    """(delay, start, end) slices of the events: one per token, or one for all."""
    starts: dict[int, float] = {0: timing.ttft}
    if timing.token > 0:
        for index in range(lead, count - tail):
            starts[index] = timing.token
    stall_at = timing.stall_after
    if stall_at is not None and timing.stall > 0 and stall_at < count:
        starts[stall_at] = starts.get(stall_at, 0.0) + timing.stall
    order = sorted(starts)
    return [(starts[b], b, e) for b, e in zip(order, [*order[1:], count], strict=True)]


async def start(send: Send, status: int, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def body(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def keep_alive(send: Send, timing: Timing, beat: bytes) -> None:
    """Hold the request `timing.queue` seconds, sending `beat` now and every interval."""
    remaining = timing.queue
    while remaining > 0:
        await body(send, beat)
        step = min(timing.keepalive, remaining)
        await asyncio.sleep(step)
        remaining -= step


async def write_events(send: Send, shaped: Shaped, timing: Timing) -> None:
    """Write the events on their schedule; raise Abort where the stream must break.

    The schedule is absolute, as a model's token rate is: the k-th token is due at
    start + ttft + k x token, however long the writes before it took. Sleeping `token`
    after each write instead would let every late wake-up (a busy core) push all later
    tokens back, so the stream drifts slower than configured under load.
    """
    budget = shaped.drop_bytes
    events = shaped.events
    slices = groups(len(events), shaped.lead, shaped.tail, timing)
    last = len(slices) - 1
    loop = asyncio.get_running_loop()
    due = loop.time()
    for index, (delay, first, end) in enumerate(slices):
        due += delay
        if delay > 0:
            await asyncio.sleep(due - loop.time())
        payload = events[first] if end - first == 1 else b"".join(events[first:end])
        if budget is not None:
            if len(payload) >= budget:
                await body(send, payload[:budget])
                raise Abort
            budget -= len(payload)
        # the last slice also ends the response: one write instead of a trailing empty one
        await body(send, payload, more=index < last or shaped.abort)
    if shaped.abort:
        raise Abort


async def write_whole(send: Send, data: bytes, drop_bytes: int | None) -> None:
    """Write a whole body, or only its first `drop_bytes` bytes and then break (always)."""
    if drop_bytes is not None:
        await body(send, data[:drop_bytes])
        raise Abort
    await body(send, data, more=False)
