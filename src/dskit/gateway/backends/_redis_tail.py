"""`LocalTails`: what this instance wrote of the answers it generates, for its own readers.

Most readers of an answer are on the instance that generates it (the client that asked
it, streaming). Through Redis alone each event cost them a wake of the shared reader
and a read of the log on the pool, on top of the append: three round trips and their
replies parsed in Python, per token. The writer already knows what it appended, so it
keeps a copy here, and readers of the answer on this instance read that copy:

    append --APPEND script--> Redis --seq--> tail.add(seq, ...) --> readers here
                                                                   (no round trip)

A tail only ever holds what Redis acknowledged, in order, from the answer's first event
(it is opened when this instance creates the answer), so it is always a prefix of the
Redis log: reading it is reading the log. It stops serving (`close`) the moment it
might fall behind: the lease lost or handed over (another instance writes now), an
acknowledged seq that does not follow the last one. Its readers are woken and go to
Redis. A finished tail is kept a moment (`LINGER`) for the readers reading its end.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from dskit.gateway.backends._log import Changes, LogEntry, LogSlice, kept

LINGER = 5.0  # seconds a finished answer's tail stays, for readers still on their way


@dataclass(slots=True)
class _Tail:
    entries: list[LogEntry] = field(default_factory=list)
    finished: bool = False
    closed: bool = False  # no longer a faithful copy: its readers go to Redis
    changes: Changes = field(default_factory=Changes)


class LocalTails:
    """The tails of the answers this instance writes, by answer id."""

    def __init__(self) -> None:
        self._tails: dict[str, _Tail] = {}

    def __len__(self) -> int:
        return len(self._tails)

    def open(self, answer_id: str) -> None:
        """A new answer created here: its log is empty, and this instance writes it."""
        self._tails[answer_id] = _Tail()

    def add(self, answer_id: str, seq: int, kind: str, data: bytes) -> None:
        """Redis acknowledged event `seq`. A retried append acknowledged again is already
        here; one that skips a seq means the copy is no longer faithful."""
        tail = self._tails.get(answer_id)
        if tail is None or tail.closed or seq <= len(tail.entries):
            return
        if seq != len(tail.entries) + 1:
            self.close(answer_id)
            return
        tail.entries.append(LogEntry(seq, kind, kept(data)))
        tail.changes.notify()

    def finish(self, answer_id: str) -> None:
        """Redis has the answer finished: readers see the end; the tail goes after LINGER."""
        tail = self._tails.get(answer_id)
        if tail is None or tail.closed:
            return
        tail.finished = True
        tail.changes.notify()
        asyncio.get_running_loop().call_later(LINGER, self._drop, answer_id, tail)

    def close(self, answer_id: str) -> None:
        """Stop serving an unfinished answer's tail (another instance may write it now)."""
        tail = self._tails.get(answer_id)
        if tail is None or tail.finished:
            return
        del self._tails[answer_id]
        tail.closed = True
        tail.changes.notify()

    def _drop(self, answer_id: str, tail: _Tail) -> None:
        if self._tails.get(answer_id) is tail:
            del self._tails[answer_id]

    async def read(self, answer_id: str, after: int, wait: float) -> LogSlice | None:
        """The entries after `after` (waiting up to `wait` for news), as the log holds
        them; None when this instance has no faithful copy (read Redis instead)."""
        tail = self._tails.get(answer_id)
        if tail is None:
            return None
        if len(tail.entries) <= after and not tail.finished and wait > 0:
            deadline = time.monotonic() + wait  # as the shared reader: news past `after`
            while len(tail.entries) <= after and not (tail.finished or tail.closed):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await tail.changes.wait(left)
        if tail.closed:
            return None
        return LogSlice(tail.entries[max(after, 0) :], tail.finished)

    def clear(self) -> None:
        for answer_id in list(self._tails):
            self.close(answer_id)
        self._tails.clear()
