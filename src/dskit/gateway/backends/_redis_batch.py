"""`ScriptBatcher`: one Lua script's calls from every task of an instance, sent together.

Each generation posts its events one at a time, and an instance runs many generations:
at 64 answers of a token every 10 ms that is thousands of appends a second, and
redis-py spends far more on each command (taking a pooled connection, packing it, a
timeout and a parse per reply, a wake-up) than Redis spends running the script. So
the calls made while the loop runs one iteration go out as one EVALSHA of a script that
takes the calls one after another (`keys_per_call` KEYS and the same number of ARGV
each) and replies with a list, one reply per call:

    post() ... post()      --one loop iteration-->  EVALSHA sha n k1 k2 k3 ... a1 a2 ...
                                                     one batch in flight at a time

While a batch is in flight the next calls gather, so the batches grow with the load.
A busy batcher also spaces its batches: the next one goes out `spacing` (2 ms) after the
previous one did, unless it is full. Each batch costs the instance about 80 us of
redis-py and Redis a script run, whatever its size: at 64 answers in flight a batch went
out every half millisecond with three answers' appends in it, 12 batches an answer;
spaced, 5. A call made when the last batch went out longer ago than that goes at once,
so a quiet instance adds no wait, and a busy one at most `spacing` to an event.

A `post()`ed call's outcome is handed to its callback, in the order the calls were made;
it goes out unless its `dropped` says why not when its batch is made (the log drops the
appends queued behind one that failed). Once sent, it runs, as a standalone command
would. A batch is retried through an outage by the caller's `patiently` (the script must
be idempotent: the log's appends carry an op id), and sent again once loaded when Redis
has forgotten the script.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger("dskit.gateway")
MAX_BATCH = 256  # calls per script run: Redis runs a script whole, blocking the rest
SPACING = 0.002  # seconds from one batch to the next while calls keep coming
Patience = Callable[[Callable[[], Awaitable[list[Any]]]], Awaitable[list[Any]]]
# a call's outcome: (its reply, None), or (None, the batch's error); CancelledError when
# the batcher stopped before sending it (the loop closing)
Landed = Callable[[Any, BaseException | None], None]


# why a call is dropped before its batch is sent (handed to it as its outcome), or None
Dropped = Callable[[], BaseException | None]


def _never() -> BaseException | None:
    return None


@dataclass(slots=True)
class _Call:
    keys: Sequence[str]
    args: Sequence[Any]
    landed: Landed
    dropped: Dropped = _never


def _sendable(calls: list[_Call]) -> list[_Call]:
    """The calls to send; each dropped one is handed the reason now."""
    batch = []
    for call in calls:
        reason = call.dropped()
        if reason is None:
            batch.append(call)
        else:
            _hand(call, None, reason)
    return batch


def _hand(call: _Call, reply: Any, exc: BaseException | None) -> None:
    """A call's outcome to its caller; a caller's callback that fails is logged, and the
    rest of the batch is handed theirs all the same."""
    try:
        call.landed(reply, exc)
    except Exception:
        logger.exception("a Redis script call's outcome could not be handed back")


class ScriptBatcher:
    """Runs `source` for many callers, each loop iteration's calls in one EVALSHA (a
    batch's error is raised to each of its calls)."""

    def __init__(
        self, client: redis.asyncio.Redis, source: str, keys_per_call: int,
        patiently: Patience, spacing: float = SPACING,
    ) -> None:  # fmt: skip
        self.client, self.source, self.patiently = client, source, patiently
        self.keys_per_call, self.spacing = keys_per_call, spacing
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the sender's, while it runs
        self._sent_at = -math.inf  # when the last batch went out (the loop's clock)
        self.batches = 0  # batches sent (for tests and benchmarks)

    def post(
        self, keys: Sequence[str], args: Sequence[Any], landed: Landed,
        dropped: Dropped | None = None,
    ) -> None:  # fmt: skip
        """Queue a call nobody waits for: its outcome is handed to `landed` (which must
        not raise), in the order the calls were made. It goes out unless `dropped` gives
        a reason not to when its batch is made (that reason is then its outcome)."""
        self._sending()
        self._add(_Call(keys, args, landed, dropped or _never))

    def _sending(self) -> None:
        """A sender task running for the calls about to be queued."""
        if self._sender is None or self._loop is None:  # a batch's first call: the loop
            loop = self._loop = asyncio.get_running_loop()  # (on Python 3.11 a getpid())
            self._sender = loop.create_task(self._send_all(), name="redis-script-batch")

    def _add(self, call: _Call) -> None:
        if len(call.keys) != self.keys_per_call:
            raise ValueError(f"each call takes {self.keys_per_call} keys")
        self._pending.append(call)

    async def _send_all(self) -> None:
        try:
            while self._pending:
                await self._spaced()
                batch = _sendable(self._pending[:MAX_BATCH])
                del self._pending[:MAX_BATCH]
                if batch:
                    await self._send(batch)
        finally:
            self._sender = None
            pending, self._pending = self._pending, []
            for call in pending:  # only when cancelled itself (the loop closing)
                _hand(call, None, asyncio.CancelledError())

    async def _spaced(self) -> None:
        """Wait until `spacing` after the last batch went out, unless a batch is full."""
        loop = self._loop
        assert loop is not None
        wait = self._sent_at + self.spacing - loop.time()
        if wait > 0 and len(self._pending) < MAX_BATCH:
            await asyncio.sleep(wait)  # the calls made meanwhile join this batch
        self._sent_at = loop.time()

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self.patiently(lambda: self._run(batch))
        except BaseException as exc:
            for call in batch:
                _hand(call, None, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            _hand(call, reply, None)

    async def _run(self, batch: list[_Call]) -> list[Any]:
        """One EVALSHA for the batch; NOSCRIPT (a restarted or flushed Redis): load the
        script and send the batch again."""
        from redis.exceptions import NoScriptError

        keys = [key for call in batch for key in call.keys]
        args = [arg for call in batch for arg in call.args]
        self.batches += 1
        try:
            return list(await self.client.evalsha(self.sha, len(keys), *keys, *args))
        except NoScriptError:
            self.sha = await self.client.script_load(self.source)
            return list(await self.client.evalsha(self.sha, len(keys), *keys, *args))
