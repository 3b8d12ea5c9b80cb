"""`GroupCommit`: the async writes of a file store, committed together by one thread.

A SQLite write made durable (`synchronous=FULL`) costs an fsync, and an async caller's
write costs a hop to a worker thread and back besides. A gateway writes three times an
answer (the question, the answer as it grows, its end), so at 64 answers in flight the
writes queued behind one another's fsyncs, and the hops cost more CPU than the SQL.
Here one writer thread takes every write queued meanwhile and runs them in one
transaction, each in a savepoint of its own (a write that fails, say on a stale version,
is undone alone), then commits once: one fsync and one wake-up of each waiting loop
for the whole group. Every caller's result is handed back only after that commit, so
a returned write is as durable as one committed alone.

    aappend() ─┐                       BEGIN IMMEDIATE
    areplace() ├─> queue ─> writer ─>   SAVEPOINT w; append ...; RELEASE w
    aappend() ─┘     (thread)           SAVEPOINT w; replace ...; RELEASE w
                                        COMMIT  ─> results to their loops
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_GROUP = 64  # writes in one transaction: the first of them waits for all of them


@dataclass(frozen=True, slots=True)
class Write:
    """One queued write: what to call, and whose future takes its outcome."""

    call: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class Outcome(Protocol):
    def __call__(self, future: asyncio.Future[Any]) -> None:
        """Settle `future` with this write's result or error."""


def result(value: Any) -> Outcome:
    return lambda future: future.set_result(value)


def failure(exc: BaseException) -> Outcome:
    return lambda future: future.set_exception(exc)


# runs `calls` in one transaction: each one's outcome, in order (their results only
# once the transaction committed; every one a failure when it did not)
Committer = Callable[[Sequence[Callable[[], Any]]], list[Outcome]]


class GroupCommit:
    """One writer thread (started on the first write, stopped by `close`) that commits
    the writes queued while it worked as one group."""

    def __init__(self, commit: Committer, name: str) -> None:
        self._commit = commit
        self._name = name
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self.groups = 0  # transactions committed (for tests and benchmarks)

    async def run(self, call: Callable[[], Any]) -> Any:
        """`call` (a write of the store), in the next group; its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(Write(call, loop, future))
        self._ensure_writer()
        return await future

    def close(self) -> None:
        """Commit what is queued, then stop the writer (a later write starts it again)."""
        with self._start:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            if thread is not threading.current_thread():
                thread.join()

    def _ensure_writer(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = self._gather(first)
            outcomes = self._commit([write.call for write in group])
            self.groups += 1
            _hand_back(group, outcomes)
            if stop:
                return

    def _gather(self, first: Write) -> tuple[list[Write], bool]:
        """The writes queued by now (up to MAX_GROUP), and whether `close` came among them."""
        group = [first]
        while len(group) < MAX_GROUP:
            try:
                write = self._queue.get_nowait()
            except queue.Empty:
                return group, False
            if write is None:
                return group, True
            group.append(write)
        return group, False


def _hand_back(group: list[Write], outcomes: list[Outcome]) -> None:
    """Each outcome to its future: one wake-up of each loop for the whole group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
    for write, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(write.loop, []).append((write.future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, outcome in settled:
        if not future.done():  # its caller was cancelled: the write stands all the same
            outcome(future)
