"""Answers generated in the background, every event written to the stream log.

The task that generates an answer is the only writer of its log; whoever wants the
answer (an SSE stream, a long poll, a blocking request, a callback) reads the log. So a
client that goes away costs nothing and a client that comes back reads what it missed.
Each answer's life is an `Answer` (`_lifecycle.py`): a cancel is a request to it, and
however many arrive, whenever, the answer ends once. The finished answer is saved to the
session store before `done` is logged, so anyone who sees `done` can also load it.
A single instance also keeps it there as it grows (`partial_save_seconds`), so a killed
gateway leaves it marked incomplete; a fleet keeps it in the shared log, where another
instance takes it over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dskit._models import ModelInfo
from dskit.gateway._errors import GatewayError
from dskit.gateway.answers._cache import CACHE_HEADER
from dskit.gateway.answers._lifecycle import (
    Answer,
    AnswerJob,
    AnswerState,
    Opened,
    close_answer,
    error_payload,
)
from dskit.gateway.answers._quota import charge_tokens
from dskit.gateway.answers._sources import ReplaySource, UpstreamSource
from dskit.gateway.answers._takeover import (
    PrefixContinuation,
    RemainderSource,
    TakeoverJob,
    job_headers,
    saved_answer,
)
from dskit.gateway.upstreams._breaker import AllUpstreamsDownError
from dskit.session._core import SessionCore
from dskit.store import SessionRecord

if TYPE_CHECKING:
    from dskit.gateway.answers._context import AnswerContext

logger = logging.getLogger("dskit.gateway")


TOOL_CALLS_LOST = GatewayError(
    503, "the instance running this answer stopped after the model called tools; it cannot "
    "be continued elsewhere (send the question again)", "server_error", code="tool_calls_lost",
)  # fmt: skip
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


def _takeover_job(job: AnswerJob) -> bytes:
    record = job.record
    return TakeoverJob(
        record.id, record.model, job.messages, dict(record.params),
        job_headers(job.extra_headers), job.callback_url, history=len(record.messages),
    ).encode()  # fmt: skip


async def open_answer(
    gw: AnswerContext, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
    headers: Mapping[str, str], principal: str,
) -> Opened:  # fmt: skip
    """The cache, then the upstreams in order; degraded (all down): a stored answer, else
    `AllUpstreamsDownError`. `params` are the client's (`extra_headers` included: no part
    of the cache key); `headers` are the caller's cache policy (`X-Dskit-Cache`, max-age);
    `principal`: who asks (the cache is per principal). Both surfaces open answers here."""
    key = gw.cache.key_for(messages, params, headers, principal)
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
        cached = await gw.cache.fallback(messages, params, principal)
        if cached is None:
            raise
        return Opened(ReplaySource(cached), None, lookup)
    return Opened(UpstreamSource(gw.pool, upstream, stream, first), key, lookup)


class AnswerRunner:
    """Starts, tracks and cancels the answers of one gateway instance."""

    def __init__(self, gateway: AnswerContext) -> None:
        self.gw = gateway
        self.worker = uuid.uuid4().hex
        self._answers: dict[str, Answer] = {}
        self._preparing: set[asyncio.Task[None]] = set()  # takeovers not yet answering
        self._handing_over = False
        shared = gateway.fleet is not None  # a fleet: the log keeps it
        self._save_every = None if shared else gateway.settings.partial_save_seconds or None

    async def start(
        self, record: SessionRecord, messages: list[dict[str, Any]], headers: Mapping[str, str],
        callback_url: str | None, principal: str,
    ) -> str:  # fmt: skip
        """Answer `record` (its last message the new question, asked by `principal`) by
        sending `messages`."""
        answer_id = uuid.uuid4().hex
        job = AnswerJob(
            answer_id, record, messages, headers, callback_url, time.monotonic(), principal
        )
        fleet = self.gw.fleet
        if fleet is not None:  # what another instance needs to take it over
            await fleet.create(answer_id, record.id, self.worker, job=_takeover_job(job))
        else:
            await self.gw.log.create(answer_id, record.id, self.worker)
        self._begin(job, lambda: self._open(job))
        return answer_id

    def _begin(self, job: AnswerJob, opener: Callable[[], Awaitable[Opened]]) -> None:
        answer = Answer(
            self.gw, job, self.worker, opener, lambda: self._handing_over, self._save_every,
            continuer=lambda record: self._after_tools(job, record),
        )  # fmt: skip
        self._answers[job.answer_id] = answer
        answer.start().add_done_callback(lambda _: self._forget(answer))

    def _forget(self, answer: Answer) -> None:
        if self._answers.get(answer.answer_id) is answer:
            del self._answers[answer.answer_id]

    async def adopt(self, answer_id: str) -> None:
        """Continue an answer whose instance died (this instance now holds its lease)."""
        task = asyncio.create_task(self._continue(answer_id), name=f"takeover-{answer_id}")
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def cancel(self, answer_id: str) -> bool:
        """Stop a generation (and its upstream request) and wait for its end; True when it
        ended cancelled, False when it is not running here or ended otherwise."""
        answer = self._answers.get(answer_id)
        if answer is None:
            return False
        answer.cancel()
        return await answer.ended() is AnswerState.CANCELLED

    async def shutdown(self) -> None:
        """Stop every generation. With a shared log they are handed over, not ended:
        their leases are released and another instance continues them."""
        self._handing_over = self.gw.fleet is not None
        for task in list(self._preparing):
            task.cancel()
        await asyncio.gather(*self._preparing, return_exceptions=True)
        answers = list(self._answers.values())
        for answer in answers:
            answer.cancel(by_caller=False)
        await asyncio.gather(*(answer.ended() for answer in answers))

    async def _continue(self, answer_id: str) -> None:
        """The takeover: the text logged so far, continued through prefix completion."""
        log = self.gw.fleet
        assert log is not None  # only a fleet's answers are taken over
        try:
            partial = await log.partial(answer_id)
            taken = TakeoverJob.decode(await log.job(answer_id))
            record = await self.gw.store.aload(taken.session_id)
        except (LookupError, TypeError, ValueError) as exc:  # no session, an unreadable job
            await self._abandon(answer_id, exc)
            return
        except BaseException as exc:  # Redis or the store out of reach: a later scan retries
            logger.warning("cannot take over answer %s: %r", answer_id, exc)
            await asyncio.shield(log.release(answer_id, self.worker))
            if isinstance(exc, Exception):
                return
            raise
        job = AnswerJob(
            answer_id, record, taken.messages, taken.headers, taken.callback_url,
            time.monotonic(),
        )  # fmt: skip
        if partial.ended:  # its instance died between its last event and finishing
            await close_answer(self.gw, job, self.worker, "completed")
            return
        logger.warning("answer %s: taking over after event %d", answer_id, partial.seq)
        self._begin(job, lambda: self._continuation(taken, partial, record))

    async def _abandon(self, answer_id: str, exc: Exception) -> None:
        """A takeover that can never work (the session was deleted while its instance was
        down, the job cannot be read): end the answer with an error, or every instance
        would take it over again on every scan until the log forgets it."""
        log = self.gw.log
        payload = error_payload(self.gw, exc, answer_id, "cannot be taken over; ending it")
        try:
            await log.append(answer_id, "error", payload)
            await log.finish(answer_id)
        finally:
            await log.release(answer_id, self.worker)

    async def _continuation(
        self, taken: TakeoverJob, partial: Any, record: SessionRecord
    ) -> Opened:
        saved = saved_answer(taken, record.messages, partial)
        if saved is not None:  # its instance saved it, then died before logging `done`
            return Opened(RemainderSource(saved, partial), None, None)
        if partial.has_tool_calls:
            raise TOOL_CALLS_LOST
        resumes = self.gw.settings.upstream_max_resumes
        return Opened(PrefixContinuation(self.gw.client, taken, partial, resumes), None, None)

    async def _open(self, job: AnswerJob) -> Opened:
        record = job.record
        call = {"model": record.model, **record.params, "extra_headers": dict(job.extra_headers)}
        return await open_answer(self.gw, job.messages, call, {}, job.principal)

    async def _after_tools(self, job: AnswerJob, record: SessionRecord) -> Opened:
        """The request that goes on after the tool results: the session as it is now
        (the tool turns at its end), planned and charged as a turn's first request.
        A taken-over answer (no principal) skips the cache and the token bucket."""
        info = await self.gw.client.model_info(record.model)
        messages = upstream_messages(record, info)
        if job.principal:
            await charge_tokens(self.gw.token_limiter, job.principal, messages)
        call = {"model": record.model, **record.params, "extra_headers": dict(job.extra_headers)}
        policy = {} if job.principal else {CACHE_HEADER.lower(): "off"}
        return await open_answer(self.gw, messages, call, policy, job.principal)
