"""Adaptive flow control: token-sized events while a client keeps up, larger ones once it
falls behind.

What a client has consumed is measured per connection: on a WebSocket by the event ids it
acknowledges (`AckWindow`), on SSE by what its connection could not send yet after a write
(`WriteMeter`: the kernel's unsent queue, `_unsent.py`; where that is unknown, how long the
write waited, as uvicorn's send waits once its own buffer is full). While a client is
behind, the stream waits instead of writing (the log keeps every event meanwhile), and the
next read's consecutive `content` (or `reasoning`) deltas go out as one event (`coalesce`).

A coalesced event covers a range of seqs: its id is its last one's (`<answer_id>:<last>`),
so resuming after it is exact, and it names its first (`from`, `<answer_id>:<first>`);
its text is the range's texts joined. Ranges are contiguous: no seq is skipped or sent
twice. Other events (tool calls, usage, done, error) always go out one per seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from starlette.types import Message, Send

from dskit.gateway.backends._log import LogEntry
from dskit.gateway.edge._response import Producer
from dskit.gateway.edge._unsent import Probe

COALESCED = frozenset({"content", "reasoning"})
WINDOW = 16  # unacknowledged events a WebSocket client may have before it is behind
HOLD_SECONDS = 1.0  # the longest a behind client waits for its next (coalesced) event
SLOW_WRITE_SECONDS = 0.05  # an SSE write that waited this long: the client is behind
BEHIND_BYTES = 2048  # what an SSE write left unsent: the client (or its link) is behind
CATCH_UP_SECONDS = 1.0  # an SSE client that took every write at once this long: caught up
POLL_SECONDS = 0.01  # how often a behind SSE stream looks whether its client took it all
PROBE_SECONDS = 0.02  # a client keeping up: its unsent bytes looked at once this often


@dataclass(frozen=True, slots=True)
class Span:
    """One event to send: `entry` (whose seq is the last of the range) from seq `first`."""

    first: int
    entry: LogEntry

    @property
    def coalesced(self) -> bool:
        return self.first != self.entry.seq


def spans(entries: Iterable[LogEntry]) -> list[Span]:
    """One span per entry (a client that keeps up)."""
    return [Span(e.seq, e) for e in entries]


def coalesce(entries: Iterable[LogEntry]) -> list[Span]:
    """Consecutive deltas of one kind merged into one span; every other entry alone."""
    out: list[Span] = []
    run: list[LogEntry] = []
    for entry in [*entries, None]:
        if run and (entry is None or entry.kind != run[0].kind or entry.kind not in COALESCED):
            out.append(_merged(run))
            run = []
        if entry is not None:
            run.append(entry)
    return out


def _merged(run: list[LogEntry]) -> Span:
    if len(run) == 1:
        return Span(run[0].seq, run[0])
    text = "".join(orjson.loads(e.data).get("text", "") for e in run)
    last = run[-1]
    return Span(run[0].seq, LogEntry(last.seq, last.kind, orjson.dumps({"text": text})))


def ws_frame(answer_id: str, span: Span) -> str:
    """The WebSocket text frame of a span: `{"id","event","data"}` (+ `from` if coalesced)."""
    entry = span.entry
    head = f'{{"id":"{answer_id}:{entry.seq}","event":"{entry.kind}",'
    if span.coalesced:
        head += f'"from":"{answer_id}:{span.first}",'
    return head + '"data":' + entry.data.decode() + "}"


def sse_frame(answer_id: str, entry: LogEntry) -> bytes:
    """One logged event as an SSE frame (`id: <answer_id>:<seq>`)."""
    return (
        b"id: " + f"{answer_id}:{entry.seq}".encode() + b"\nevent: " + entry.kind.encode()
        + b"\ndata: " + entry.data + b"\n\n"
    )  # fmt: skip


def sse_span_frame(answer_id: str, span: Span) -> bytes:
    """The SSE frame of a span (a coalesced one adds `from` to its JSON data)."""
    entry = span.entry
    if not span.coalesced:
        return sse_frame(answer_id, entry)
    data = entry.data[:-1] + f',"from":"{answer_id}:{span.first}"}}'.encode()
    return sse_frame(answer_id, LogEntry(entry.seq, entry.kind, data))


class AckWindow:
    """What a WebSocket client has acknowledged. A client that never acks is not
    measured (every event goes out as it is logged); one that acks is behind once
    `window` events are unacknowledged, and caught up again at a quarter of that."""

    def __init__(self, window: int = WINDOW, hold: float = HOLD_SECONDS) -> None:
        self.window = window
        self.hold = hold
        self.behind = False
        self.acking = False
        self.held = False  # the stream waited for acks: what piled up meanwhile is merged
        self._inflight: deque[int] = deque()  # last seqs of the events sent, oldest first
        self._acked = asyncio.Event()

    def reset(self) -> None:
        """A new answer is followed: nothing of it is in flight."""
        self._inflight.clear()
        self.behind = self.held = False

    def sent(self, seq: int) -> None:
        self._inflight.append(seq)
        if self.acking and len(self._inflight) >= self.window:
            self.behind = True

    def ack(self, seq: int) -> None:
        self.acking = True
        while self._inflight and self._inflight[0] <= seq:
            self._inflight.popleft()
        if len(self._inflight) <= self.window // 4:
            self.behind = False
        self._acked.set()

    def spans(self, entries: list[LogEntry]) -> list[Span]:
        """The events to send for these entries: merged while the client is behind, or
        when they piled up while the stream waited for it."""
        merge, self.held = self.behind or self.held, False
        return coalesce(entries) if merge else spans(entries)

    async def room(self) -> None:
        """Wait (up to `hold`) while the client has a full window unacknowledged."""
        if not self.acking or len(self._inflight) < self.window:
            return
        self.held = True
        self._acked.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._acked.wait(), self.hold)


class WriteMeter:
    """An SSE client's pace, measured after each write: behind once a write leaves
    `behind_bytes` unsent (`unsent`: the connection's probe, `_unsent.py`) or waited
    `slow` seconds (uvicorn's send waiting for its buffer to drain: the only sign where
    there is no probe); caught up once its writes left nothing unsent and did not wait
    for `catch_up` seconds. While it is behind, `room()` waits (up to `hold`) until the
    client has taken all that was written, and what piled up meanwhile goes out merged."""

    def __init__(
        self, unsent: Probe | None = None, *, behind_bytes: int = BEHIND_BYTES,
        slow: float = SLOW_WRITE_SECONDS, catch_up: float = CATCH_UP_SECONDS,
        hold: float = HOLD_SECONDS, poll: float = POLL_SECONDS,
        probe_every: float = PROBE_SECONDS,
    ) -> None:  # fmt: skip
        self.unsent = unsent
        self.behind_bytes = behind_bytes
        self.slow = slow
        self.catch_up = catch_up
        self.hold = hold
        self.poll = poll
        self.probe_every = probe_every
        self.behind = False
        self._seen_behind = 0.0  # when a write last showed the client behind
        self._probed = -math.inf  # when the probe was last asked

    def metered(self, produce: Producer) -> Producer:
        """`produce`, each of its writes timed and measured."""

        async def run(send: Send) -> None:
            async def timed(message: Message) -> None:
                started = time.monotonic()
                await send(message)
                self.wrote(time.monotonic() - started)

            await produce(timed)

        return run

    def wrote(self, seconds: float) -> None:
        """A write took `seconds`; what it left unsent tells the client's pace. While
        the client keeps up, the probe (a system call) is asked at most every
        `probe_every` seconds: a queue that grows takes many writes to reach
        `behind_bytes`, and a token a write would cost one call each."""
        now = time.monotonic()
        if not self.behind and seconds < self.slow and now - self._probed < self.probe_every:
            return
        self._probed = now
        unsent = self.unsent() if self.unsent is not None else 0
        if seconds >= self.slow or unsent >= self.behind_bytes:
            self.behind, self._seen_behind = True, now
        elif unsent == 0 and seconds < self.slow / 10 and now - self._seen_behind >= self.catch_up:
            self.behind = False

    def spans(self, entries: list[LogEntry]) -> list[Span]:
        """The events to send for these entries: merged while the client is behind."""
        return coalesce(entries) if self.behind else spans(entries)

    async def room(self) -> None:
        """While the client is behind, wait (up to `hold`) until it has taken all that
        was written; the entries logged meanwhile pile up for one merged write. (The
        kernel tells no one when its queue empties: it is looked at every `poll` s.)"""
        if not self.behind or self.unsent is None:
            return
        deadline = time.monotonic() + self.hold
        while self.unsent() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (no event)
            await asyncio.sleep(self.poll)
