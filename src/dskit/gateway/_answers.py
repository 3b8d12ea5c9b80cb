"""Answers generated in the background, every event written to the stream log.

The task that generates an answer is the only writer of its log; whoever wants the
answer (an SSE stream, a long poll, a blocking request, a callback) reads the log. So a
client that goes away costs nothing, a client that comes back reads what it missed, and
cancel is one `task.cancel()` that closes the upstream request through the client's
context manager. The finished answer is saved to the session store before `done` is
logged, so anyone who sees `done` can also load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dskit.client._async import AsyncStream
from dskit.client._types import ChatResult, StreamEvent
from dskit.gateway._errors import from_exception
from dskit.store import SessionConflictError, SessionRecord, StoredMessage

if TYPE_CHECKING:
    from dskit.gateway._state import Gateway

logger = logging.getLogger("dskit.gateway")
LEASE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class AnswerJob:
    """What a background answer needs: the session as it stands and how to call upstream."""

    answer_id: str
    record: SessionRecord
    extra_headers: Mapping[str, str]
    callback_url: str | None
    started: float


def upstream_messages(record: SessionRecord) -> list[dict[str, Any]]:
    """The conversation as the API wants it: system first, no stale reasoning."""
    messages: list[dict[str, Any]] = []
    if record.system:
        messages.append({"role": "system", "content": record.system})
    for stored in record.messages:
        message = dict(stored.message)
        message.pop("reasoning_content", None)
        messages.append(message)
    return messages


def event_payload(event: StreamEvent) -> tuple[str, bytes] | None:
    """The log entry for a client event (None: not logged)."""
    kind = event.type
    if kind in ("content", "reasoning"):
        return kind, orjson.dumps({"text": event.text})  # type: ignore[union-attr]
    if kind == "tool_call":
        return kind, orjson.dumps(
            {"index": event.index, "id": event.id, "name": event.name,  # type: ignore[union-attr]
             "arguments": event.arguments}  # type: ignore[union-attr]
        )  # fmt: skip
    if kind == "usage":
        return kind, orjson.dumps(event.usage.to_dict())  # type: ignore[union-attr]
    return None


def turn_of(result: ChatResult, incomplete: bool = False) -> dict[str, Any]:
    message = result.to_message()
    return {**message, "incomplete": incomplete, "usage": _usage(result)}


def _usage(result: ChatResult) -> dict[str, Any] | None:
    return result.usage.to_dict() if result.usage else None


class AnswerRunner:
    """Starts, tracks and cancels the background tasks of one gateway instance."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.worker = uuid.uuid4().hex
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(
        self, record: SessionRecord, headers: Mapping[str, str], callback_url: str | None
    ) -> str:
        answer_id = uuid.uuid4().hex
        await self.gw.log.create(answer_id, record.id)
        job = AnswerJob(answer_id, record, headers, callback_url, time.monotonic())
        task = asyncio.create_task(self._run(job), name=f"answer-{answer_id}")
        self._tasks[answer_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(answer_id, None))
        return answer_id

    async def cancel(self, answer_id: str) -> bool:
        """Stop a generation (and its upstream request); False when it is not running here."""
        task = self._tasks.get(answer_id)
        if task is None:
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        return True

    async def shutdown(self) -> None:
        for answer_id in list(self._tasks):
            await self.cancel(answer_id)

    async def _run(self, job: AnswerJob) -> None:
        gw, log = self.gw, self.gw.log
        await log.lease(job.answer_id, self.worker, LEASE_SECONDS)
        gw.metrics.active_generations.inc()
        status, stream = "completed", None
        try:
            stream = gw.client.stream(
                upstream_messages(job.record), model=job.record.model,
                extra_headers=dict(job.extra_headers), **job.record.params,
            )  # fmt: skip
            await self._generate(job, stream)
        except (Exception, asyncio.CancelledError) as exc:  # every failure ends in an event
            status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
            await self._fail(job, exc, stream.snapshot() if stream else ChatResult())
        finally:
            gw.metrics.active_generations.dec()
            await log.finish(job.answer_id)
            await log.release(job.answer_id, self.worker)
        logger.info("answer %s %s", job.answer_id, status)
        if job.callback_url:
            await gw.send_callback(job.callback_url, job.answer_id)

    async def _generate(self, job: AnswerJob, stream: AsyncStream) -> None:
        gw, append, answer_id = self.gw, self.gw.log.append, job.answer_id
        first = True
        async with stream:
            async for event in stream:
                entry = event_payload(event)
                if entry is not None:
                    if first and entry[0] != "usage":
                        first = False
                        gw.metrics.ttft.labels("sessions").observe(time.monotonic() - job.started)
                    await append(answer_id, *entry)
                elif event.type == "resumed":
                    gw.metrics.resumes.inc()
                elif event.type == "retrying":
                    gw.metrics.retries.inc()
            result = await stream.final()
        await self._save(job, result, incomplete=False)
        gw.metrics.count_usage(result.usage)
        gw.metrics.latency.labels("sessions").observe(time.monotonic() - job.started)
        await append(answer_id, "done", orjson.dumps(self._done_payload(result)))

    @staticmethod
    def _done_payload(result: ChatResult) -> dict[str, Any]:
        return {"finish_reason": result.finish_reason, "usage": _usage(result),
                "message": turn_of(result)}  # fmt: skip

    async def _fail(self, job: AnswerJob, exc: BaseException, partial: ChatResult) -> None:
        cancelled = isinstance(exc, asyncio.CancelledError)
        if partial.content or partial.reasoning_content or partial.tool_calls:
            with contextlib.suppress(Exception):
                await self._save(job, partial, incomplete=True)
        error = from_exception(exc) if not cancelled else None
        payload = (
            {"message": "the answer was cancelled", "type": "cancelled", "code": "cancelled",
             "status": 499}
            if error is None
            else {**error.body()["error"], "status": error.status}
        )  # fmt: skip
        if error is not None:
            self.gw.metrics.errors.labels(error.kind).inc()
            logger.warning("answer %s failed: %s", job.answer_id, error.message)
        await self.gw.log.append(job.answer_id, "error", orjson.dumps(payload))

    async def _save(self, job: AnswerJob, result: ChatResult, *, incomplete: bool) -> None:
        """Append the assistant turn, reloading once if another writer got there first."""
        store, record = self.gw.store, job.record
        message = StoredMessage(result.to_message(), incomplete=incomplete, usage=_usage(result))
        try:
            await store.aappend(record.id, [message], expected_version=record.version)
        except SessionConflictError:
            current = await store.aload(record.id)
            await store.aappend(record.id, [message], expected_version=current.version)
