"""Where a paused answer's client-side tool results wait for it: one mailbox per answer.

An answer whose model output calls the session's tools pauses (`_lifecycle.py`, state
WAITING): it opens its mailbox with the ids of its tool calls, logs `tool_wait`, and
waits until every call has its result (or its deadline passes). Results come from any
surface and, in a fleet, any instance: the WebSocket's `tool_result` frame, gRPC's
`ToolResult`, `POST .../answers/{answer_id}/tool_results` all `put` into the mailbox;
only the answer's owner takes them out and stores them as tool turns, so each is stored
once, in the order of the calls.

    put(answer, call, content) -> ACCEPTED (with the calls still pending)
                                | NOT_WAITING   no mailbox open (none, or it was closed)
                                | UNKNOWN_CALL  not one of the calls it waits for
                                | DUPLICATE     that call has its result already
    wait(answer, seconds) -> every result, or None (timed out); the mailbox closes either way

`MemoryToolResults` serves one process. `RedisToolResults` keeps the mailbox in Redis
beside the answer's log (same hash tag):

    <ns>:answer:{<id>}:tools     a hash: open, calls (in order), total, n, c:<call> (0|1)
    <ns>:answer:{<id>}:results   a stream: result n is entry `<n>-0` (call id, content)

`put` is one script (check and store at once, so two instances cannot both store a
result for one call); the owner waits on the results stream through its instance's
`SharedReader`, as readers of a log do (no connection of its own per waiting answer).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from dskit.client._types import ChatResult
from dskit.gateway._errors import GatewayError
from dskit.gateway.backends._redis_reader import SharedReader
from dskit.store import StoredMessage

if TYPE_CHECKING:
    import redis.asyncio

    from dskit.gateway.backends._redis import RedisParts

KEEP_AFTER_DEADLINE = 60.0  # seconds a Redis mailbox outlives its deadline (then expires)


# ---- what a pause is made of ---------------------------------------------------------


def calls_tools(result: ChatResult) -> bool:
    """Whether an output ends by calling tools (the session's: its client runs them)."""
    return result.finish_reason == "tool_calls" and bool(result.tool_calls)


def tool_wait_payload(result: ChatResult, seconds: float) -> bytes:
    """The `tool_wait` event: the whole calls (as the stored turn has them) and how long
    the answer waits for their results."""
    calls = [call.to_dict() for call in result.tool_calls]
    return orjson.dumps({"tool_calls": calls, "timeout_seconds": seconds})


def tool_turns(call_ids: Sequence[str], results: Mapping[str, str]) -> list[StoredMessage]:
    """The results as tool turns, in the order of the calls."""
    return [
        StoredMessage({"role": "tool", "tool_call_id": call_id, "content": results[call_id]})
        for call_id in call_ids
    ]


def tool_timeout(call_ids: Sequence[str], seconds: float) -> GatewayError:
    return GatewayError(
        408, f"no result for tool call(s) {', '.join(call_ids)} came within {seconds:g} s; "
        "the answer ended", "timeout_error", code="tool_timeout",
    )  # fmt: skip


# ---- the mailboxes ---------------------------------------------------------------------


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    NOT_WAITING = "not_waiting"
    UNKNOWN_CALL = "unknown_call"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one result: its outcome and the calls still waiting for theirs."""

    outcome: Outcome
    pending: tuple[str, ...] = ()


class ToolResults(Protocol):
    """The mailboxes of paused answers (see the module docstring)."""

    async def open(self, answer_id: str, call_ids: Sequence[str], seconds: float) -> None: ...
    async def put(self, answer_id: str, call_id: str, content: str) -> Delivery: ...
    async def wait(self, answer_id: str, seconds: float) -> dict[str, str] | None: ...
    async def close(self, answer_id: str) -> None: ...


@dataclass(slots=True)
class _Box:
    calls: tuple[str, ...]
    results: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.calls)


class MemoryToolResults:
    """The mailboxes of one process (its answers and its surfaces share the loop)."""

    def __init__(self) -> None:
        self._boxes: dict[str, _Box] = {}

    def __len__(self) -> int:
        return len(self._boxes)

    async def open(self, answer_id: str, call_ids: Sequence[str], seconds: float) -> None:
        self._boxes[answer_id] = _Box(tuple(call_ids))

    async def put(self, answer_id: str, call_id: str, content: str) -> Delivery:
        box = self._boxes.get(answer_id)
        if box is None:
            return Delivery(Outcome.NOT_WAITING)
        if call_id not in box.calls:
            return Delivery(Outcome.UNKNOWN_CALL, _pending(box.calls, box.results))
        if call_id in box.results:
            return Delivery(Outcome.DUPLICATE, _pending(box.calls, box.results))
        box.results[call_id] = content
        box.changed.set()
        return Delivery(Outcome.ACCEPTED, _pending(box.calls, box.results))

    async def wait(self, answer_id: str, seconds: float) -> dict[str, str] | None:
        box = self._boxes[answer_id]
        try:
            async with asyncio.timeout(seconds):
                while not box.complete:
                    box.changed.clear()
                    await box.changed.wait()
        except TimeoutError:
            pass
        finally:  # no await between the last check and here: nothing lands in between
            self._boxes.pop(answer_id, None)
        return dict(box.results) if box.complete else None

    async def close(self, answer_id: str) -> None:
        self._boxes.pop(answer_id, None)


def _pending(calls: Sequence[str], results: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(c for c in calls if c not in results)


# KEYS: tools, results. ARGV: call id, content, ms to keep the results.
# Returns {1, pending...} accepted, {-1} not waiting, {-2, pending...} unknown call,
# {-3, pending...} a duplicate.
PUT_SCRIPT = """
if redis.call('HGET', KEYS[1], 'open') ~= '1' then return {-1} end
local state = redis.call('HGET', KEYS[1], 'c:' .. ARGV[1])
local code = 1
if not state then code = -2 elseif state ~= '0' then code = -3 end
if code == 1 then
  redis.call('HSET', KEYS[1], 'c:' .. ARGV[1], '1')
  local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
  redis.call('XADD', KEYS[2], n .. '-0', 'id', ARGV[1], 'd', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local reply = {code}
for id in string.gmatch(redis.call('HGET', KEYS[1], 'calls'), '[^\\n]+') do
  if redis.call('HGET', KEYS[1], 'c:' .. id) == '0' then table.insert(reply, id) end
end
return reply
"""

# KEYS: tools. ARGV: 1 to close whatever arrived (the deadline passed), else 0.
# Closes the mailbox once every result is in (or when told to); returns {n, total, closed}.
TAKE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'open') ~= '1' then return {0, 1, 1} end
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if n < total and ARGV[1] ~= '1' then return {n, total, 0} end
redis.call('HSET', KEYS[1], 'open', '0')
return {n, total, 1}
"""

OUTCOMES = {1: Outcome.ACCEPTED, -1: Outcome.NOT_WAITING, -2: Outcome.UNKNOWN_CALL,
            -3: Outcome.DUPLICATE}  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisToolResults:
    """The mailboxes of a fleet: any instance puts, the answer's owner waits."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str, reader: SharedReader) -> None:
        self.redis, self.reader, self._ns = client, reader, namespace
        self._put = client.register_script(PUT_SCRIPT)
        self._take = client.register_script(TAKE_SCRIPT)

    def _keys(self, answer_id: str) -> tuple[str, str]:
        if not answer_id or any(c in answer_id for c in "{} "):
            raise ValueError(f"invalid answer id {answer_id!r}")
        base = f"{self._ns}:answer:{{{answer_id}}}"
        return f"{base}:tools", f"{base}:results"

    async def open(self, answer_id: str, call_ids: Sequence[str], seconds: float) -> None:
        tools, results = self._keys(answer_id)
        fields: dict[Any, Any] = {"open": 1, "calls": "\n".join(call_ids), "total": len(call_ids),
                                  "n": 0, **{f"c:{c}": 0 for c in call_ids}}  # fmt: skip
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(tools, results)
            pipe.hset(tools, mapping=fields)
            pipe.pexpire(tools, _keep_ms(seconds))
            await pipe.execute()

    async def put(self, answer_id: str, call_id: str, content: str) -> Delivery:
        try:
            keys = self._keys(answer_id)
        except ValueError:
            return Delivery(Outcome.NOT_WAITING)
        args: list[Any] = [call_id, content, _keep_ms(KEEP_AFTER_DEADLINE)]
        code, *pending = await self._put(keys=list(keys), args=args)
        return Delivery(OUTCOMES[int(code)], tuple(_text(p) for p in pending))

    async def wait(self, answer_id: str, seconds: float) -> dict[str, str] | None:
        tools, results = self._keys(answer_id)
        deadline = time.monotonic() + seconds
        try:
            while True:
                late = int(time.monotonic() >= deadline)
                n, total, closed = (int(v) for v in await self._take(keys=[tools], args=[late]))
                if closed:
                    return await self._results(results) if n == total else None
                await self.reader.wait(results, n, max(deadline - time.monotonic(), 0.001))
        finally:
            await asyncio.shield(self.close(answer_id))

    async def _results(self, key: str) -> dict[str, str]:
        entries: Any = await self.redis.xrange(key, "-", "+")
        found = {}
        for _, fields in entries:
            values = {_text(k): v for k, v in fields.items()}
            found[_text(values["id"])] = _text(values["d"])
        return found

    async def close(self, answer_id: str) -> None:
        await self.redis.delete(*self._keys(answer_id))


def _keep_ms(seconds: float) -> int:
    return int((seconds + KEEP_AFTER_DEADLINE) * 1000)


def make_tool_results(parts: RedisParts | None) -> ToolResults:
    """The fleet's mailboxes on its Redis, else this process' own."""
    if parts is None:
        return MemoryToolResults()
    return RedisToolResults(parts.client, parts.log.settings.namespace, parts.log.reader)
