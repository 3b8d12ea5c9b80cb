"""`ScriptBatcher`: one Lua script's calls from every task of an instance, sent together.

Each generation appends its events one at a time (it waits for each seq), but an
instance runs many generations: at 64 answers of a token every 10 ms that is thousands
of appends a second, and redis-py spends far more on each standalone command (taking a
pooled connection, checking it, timeouts, a write and a wake-up per reply) than Redis
spends running the script. So the calls made while the loop runs one iteration go out
as one pipeline, on one connection, with one write:

    append() ... append()  --one loop iteration-->  [EVALSHA, EVALSHA, ...] --> replies
                                                     one pipeline in flight at a time

While a pipeline is in flight the next calls gather, so the batches grow with the load
and nothing waits on a timer. Each call still gets its own reply (or error). A call
whose task is cancelled before its pipeline goes out is left out; once sent, it runs (as
a standalone command would). The whole pipeline is retried through an outage by the
caller's `patiently`: the script must be idempotent (the log's appends carry an op id).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger("dskit.gateway")
Patience = Callable[[Callable[[], Awaitable[list[Any]]]], Awaitable[list[Any]]]


@dataclass(slots=True)
class _Call:
    keys: Sequence[str]
    args: Sequence[Any]
    reply: asyncio.Future[Any]


class ScriptBatcher:
    """Runs `source` for many callers, each loop iteration's calls in one pipeline."""

    def __init__(self, client: redis.asyncio.Redis, source: str, patiently: Patience) -> None:
        self.client, self.source, self.patiently = client, source, patiently
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent (for tests and benchmarks)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply to this call (its error raised)."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Call(keys, args, reply))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="redis-script-batch")
        return await reply

    async def _send_all(self) -> None:
        try:
            while self._pending:
                batch = [call for call in self._pending if not call.reply.done()]
                self._pending = []
                if batch:
                    await self._send(batch)
        finally:
            self._sender = None
            for call in self._pending:  # only when cancelled itself (the loop closing)
                if not call.reply.done():
                    call.reply.cancel()
            self._pending = []

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self.patiently(lambda: self._pipeline(batch))
        except BaseException as exc:
            for call in batch:
                if not call.reply.done():
                    call.reply.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            if call.reply.done():
                continue
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        """One pipeline of EVALSHA; calls Redis answered NOSCRIPT (a restarted or flushed
        Redis) are sent again once the script is loaded."""
        from redis.exceptions import NoScriptError

        replies = await self._evalsha(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            self.sha = await self.client.script_load(self.source)
            again = await self._evalsha([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _evalsha(self, batch: list[_Call]) -> list[Any]:
        self.batches += 1
        async with self.client.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.execute_command("EVALSHA", self.sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))
