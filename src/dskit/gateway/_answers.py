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
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dskit._models import ModelInfo
from dskit.client._types import ChatResult, StreamEvent
from dskit.gateway._breaker import AllUpstreamsDownError
from dskit.gateway._errors import logged_error
from dskit.gateway._redis_log import LeaseLostError, RedisStreamLog, stop_if_cancelled
from dskit.gateway._scale import AnswerSource, CacheRequest, ReplaySource, UpstreamSource
from dskit.gateway._takeover import (
    PrefixContinuation,
    RemainderSource,
    TakeoverJob,
    job_headers,
    saved_answer,
)
from dskit.session._core import SessionCore, worth_keeping
from dskit.store import SessionConflictError, SessionRecord, StoredMessage

if TYPE_CHECKING:
    from dskit.gateway._state import Gateway

logger = logging.getLogger("dskit.gateway")
CANCELLED = orjson.dumps({"message": "the answer was cancelled", "type": "cancelled",
                          "code": "cancelled", "status": 499})  # fmt: skip


@dataclass(frozen=True, slots=True)
class AnswerJob:
    """What a background answer needs: the session as it stands and how to call upstream."""

    answer_id: str
    record: SessionRecord
    messages: list[dict[str, Any]]  # what is sent upstream (see `upstream_messages`)
    extra_headers: Mapping[str, str]
    callback_url: str | None
    started: float


# what the session core needs of a gateway session's parameters to plan its messages
PLANNING_PARAMS = frozenset({"max_tokens", "thinking", "effort"})


def upstream_messages(record: SessionRecord, info: ModelInfo | None) -> list[dict[str, Any]]:
    """The conversation as `ChatSession` sends it, planned by the same session core: the
    latest summary in the system head instead of the turns it covers, cut-off answers as
    text only (or left out), API keys only, old turns dropped to fit the model's window
    (ContextOverflowError when even the latest turn cannot fit); `info`: what the
    upstream's `GET /models` says of the model (None: the sheet's figures)."""
    # A gateway session's `tools` are raw definitions its client runs: the core gets
    # them as such (they count against the window and decide the reasoning rule).
    params = {k: v for k, v in record.params.items() if k in PLANNING_PARAMS}
    tools = record.params.get("tools")
    core = SessionCore(
        dataclasses.replace(record, params=params),
        wire_tools=tools if isinstance(tools, list) else (),
    )
    core.model_info = info
    return core.plan().messages


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


def _snapshot(source: AnswerSource | None) -> ChatResult:
    return source.snapshot() if source is not None else ChatResult()


def _takeover_job(job: AnswerJob) -> bytes:
    record = job.record
    return TakeoverJob(
        record.id, record.model, job.messages, dict(record.params),
        job_headers(job.extra_headers), job.callback_url, history=len(record.messages),
    ).encode()  # fmt: skip


@dataclass(frozen=True, slots=True)
class Opened:
    """Where an answer comes from, and what it is cached under once it ends well."""

    source: AnswerSource
    key: CacheRequest | None  # None: not to be stored (no cache, or it came from there)
    lookup: str | None  # the cache lookup's result; None: the request skips the cache


async def open_answer(
    gw: Gateway, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
    headers: Mapping[str, str],
) -> Opened:  # fmt: skip
    """The cache, then the upstreams in order; degraded (all down): a stored answer, else
    `AllUpstreamsDownError`. `params` are the client's (`extra_headers` included: no part
    of the cache key); `headers` are the caller's cache policy (`X-Dskit-Cache`, max-age).
    Both surfaces open their answers here."""
    key = gw.cache.key_for(messages, params, headers)
    lookup = None
    if key is not None:
        found = await gw.cache.lookup(key, headers)
        if found.status == "hit" and found.answer is not None:
            return Opened(ReplaySource(found.answer.result), None, "hit")
        lookup = found.status
    assert gw.pool is not None
    try:
        upstream, stream, first = await gw.pool.open(messages, params)
    except AllUpstreamsDownError:
        cached = await gw.cache.fallback(messages, params)
        if cached is None:
            raise
        return Opened(ReplaySource(cached), None, lookup)
    return Opened(UpstreamSource(gw.pool, upstream, stream, first), key, lookup)


class AnswerRunner:
    """Starts, tracks and cancels the background tasks of one gateway instance."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.worker = uuid.uuid4().hex
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._handing_over = False

    async def start(
        self, record: SessionRecord, messages: list[dict[str, Any]], headers: Mapping[str, str],
        callback_url: str | None,
    ) -> str:  # fmt: skip
        """Answer `record` (its last message the new question) by sending `messages`."""
        answer_id = uuid.uuid4().hex
        job = AnswerJob(answer_id, record, messages, headers, callback_url, time.monotonic())
        log = self.gw.log
        if isinstance(log, RedisStreamLog):  # what another instance needs to take it over
            await log.create(answer_id, record.id, self.worker, job=_takeover_job(job))
        else:
            await log.create(answer_id, record.id, self.worker)
        self._track(answer_id, self._run(job))
        return answer_id

    def _track(self, answer_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"answer-{answer_id}")
        self._tasks[answer_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(answer_id, None))

    async def adopt(self, answer_id: str) -> None:
        """Continue an answer whose instance died (this instance now holds its lease)."""
        self._track(answer_id, self._continue(answer_id))

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
        """Stop every generation. With a shared log they are handed over, not ended:
        their leases are released and another instance continues them."""
        self._handing_over = isinstance(self.gw.log, RedisStreamLog)
        for answer_id in list(self._tasks):
            await self.cancel(answer_id)

    async def _run(self, job: AnswerJob) -> None:
        """A new answer (leased to this instance since `create`)."""
        await self._produce(job, lambda: self._open(job))

    async def _continue(self, answer_id: str) -> None:
        """The takeover: the text logged so far, continued through prefix completion."""
        log = self.gw.log
        assert isinstance(log, RedisStreamLog)
        try:
            partial = await log.partial(answer_id)
            taken = TakeoverJob.decode(await log.job(answer_id))
            record = await self.gw.store.aload(taken.session_id)
        except (LookupError, TypeError, ValueError) as exc:  # no session, an unreadable job
            await self._abandon(answer_id, exc)
            return
        except Exception as exc:  # Redis or the store out of reach: a later scan retries
            logger.warning("cannot take over answer %s: %s", answer_id, exc)
            await log.release(answer_id, self.worker)
            return
        job = AnswerJob(
            answer_id, record, taken.messages, taken.headers, taken.callback_url,
            time.monotonic(),
        )  # fmt: skip
        if partial.ended:  # its instance died between its last event and finishing
            await self._close(job, "completed")
            return
        logger.warning("answer %s: taking over after event %d", answer_id, partial.seq)
        await self._produce(job, lambda: self._continuation(taken, partial, record))

    async def _abandon(self, answer_id: str, exc: Exception) -> None:
        """A takeover that can never work (the session was deleted while its instance was
        down, the job cannot be read): end the answer with an error, or every instance
        would take it over again on every scan until the log forgets it."""
        log = self.gw.log
        payload = self._error_payload(exc, answer_id, "cannot be taken over; ending it")
        await log.append(answer_id, "error", payload)
        await log.finish(answer_id)
        await log.release(answer_id, self.worker)

    async def _continuation(
        self, taken: TakeoverJob, partial: Any, record: SessionRecord
    ) -> Opened:
        saved = saved_answer(taken, record.messages, partial)
        if saved is not None:  # its instance saved it, then died before logging `done`
            return Opened(RemainderSource(saved, partial), None, None)
        if partial.has_tool_calls:
            raise RuntimeError("the instance died inside a tool call; it cannot be continued")
        resumes = self.gw.settings.upstream_max_resumes
        return Opened(PrefixContinuation(self.gw.client, taken, partial, resumes), None, None)

    async def _produce(self, job: AnswerJob, opener: Callable[[], Awaitable[Opened]]) -> None:
        gw = self.gw
        gw.metrics.active_generations.inc()
        status, source = "completed", None
        try:
            opened = await opener()
            source = opened.source
            await self._generate(job, source, opened.key)
        except asyncio.CancelledError:
            if self._handing_over:  # shutting down: another instance continues it
                await self._hand_over(job)
                raise
            status = "cancelled"
            await self._fail(job, asyncio.CancelledError(), _snapshot(source))
        except LeaseLostError as exc:  # another instance writes this answer now: stop
            logger.warning("answer %s: %s", job.answer_id, exc)
            status = "lost"
        except Exception as exc:  # every failure ends in an event
            status = "failed"
            await self._fail(job, exc, _snapshot(source))
        finally:
            gw.metrics.active_generations.dec()
            if source is not None:
                await source.aclose()
        if status != "lost":
            await self._close(job, status)

    async def _close(self, job: AnswerJob, status: str) -> None:
        log = self.gw.log
        await log.finish(job.answer_id)
        await log.release(job.answer_id, self.worker)
        logger.info("answer %s %s", job.answer_id, status)
        if job.callback_url:
            await self.gw.send_callback(job.callback_url, job.answer_id, job.record.id)

    async def _hand_over(self, job: AnswerJob) -> None:
        with contextlib.suppress(Exception):  # the source is closed by `_produce`
            await self.gw.log.release(job.answer_id, self.worker)
        logger.info("answer %s handed over to another instance", job.answer_id)

    async def _open(self, job: AnswerJob) -> Opened:
        record = job.record
        call = {"model": record.model, **record.params, "extra_headers": dict(job.extra_headers)}
        return await open_answer(self.gw, job.messages, call, {})

    async def _generate(
        self, job: AnswerJob, source: AnswerSource, key: CacheRequest | None
    ) -> None:
        gw, append, answer_id = self.gw, self.gw.log.append, job.answer_id
        first = True
        async for event in source.events():
            entry = event_payload(event)
            if entry is not None:
                if first and entry[0] != "usage":
                    first = False
                    gw.metrics.ttft.labels("sessions").observe(time.monotonic() - job.started)
                await append(answer_id, *entry)
                stop_if_cancelled()
            elif event.type == "resumed":
                gw.metrics.resumes.inc()
            elif event.type == "retrying":
                gw.metrics.retries.inc()
        result = await source.final()
        if not source.saved:
            await self._save(job, SessionCore.reply_message(result))
        await gw.cache.store(key, result)
        gw.metrics.count_usage(result.usage)
        gw.metrics.latency.labels("sessions").observe(time.monotonic() - job.started)
        done = self._done_payload(result)
        if source.cached:
            done["cached"] = True
        await append(answer_id, "done", orjson.dumps(done))

    @staticmethod
    def _done_payload(result: ChatResult) -> dict[str, Any]:
        return {"finish_reason": result.finish_reason, "usage": _usage(result),
                "message": turn_of(result)}  # fmt: skip

    async def _fail(self, job: AnswerJob, exc: BaseException, partial: ChatResult) -> None:
        message = SessionCore.reply_message(partial, incomplete=True)
        if worth_keeping(message):  # the session's rule for a cut-off answer
            with contextlib.suppress(Exception):
                await self._save(job, message)
        cancelled = isinstance(exc, asyncio.CancelledError)
        payload = CANCELLED if cancelled else self._error_payload(exc, job.answer_id)
        await self.gw.log.append(job.answer_id, "error", payload)

    def _error_payload(self, exc: BaseException, answer_id: str, what: str = "failed") -> bytes:
        """An answer's `error` event for a failure: the gateway's error shape, counted and
        logged once."""
        error = logged_error(exc, f"answer {answer_id}")
        self.gw.metrics.errors.labels(error.kind).inc()
        logger.warning("answer %s %s: %s", answer_id, what, error.message)
        return orjson.dumps({**error.body()["error"], "status": error.status})

    async def _save(self, job: AnswerJob, message: StoredMessage) -> None:
        """Append the assistant turn, reloading once if another writer got there first."""
        store, record = self.gw.store, job.record
        try:
            await store.aappend(record.id, [message], expected_version=record.version)
        except SessionConflictError:
            current = await store.aload(record.id)
            await store.aappend(record.id, [message], expected_version=current.version)
