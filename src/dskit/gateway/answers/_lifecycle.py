"""The life of one answer: a small state machine with one owner, `Answer`.

    STARTING --> RUNNING <--> WAITING           RUNNING, WAITING --> ENDING
        \\           \\          /                    CANCELLING --> ENDING
         `------------`--> CANCELLING        ENDING --> FINISHED | CANCELLED | FAILED

`TRANSITIONS` lists every move and `Answer._move` refuses any other. WAITING is an
answer whose model output called the session's client-side tools: it logged the calls
and `tool_wait`, and waits (up to `tool_result_timeout_seconds`) for their results in
its mailbox (`_tool_results.py`); with all of them in, they are stored as tool turns and
the same answer goes on RUNNING with a new upstream request, its seqs continuing. A
timeout ends it with one `error` (`tool_timeout`), a cancel ends it cancelled.

Two tasks per answer. The *generation* (open the source, log its events, pause for tool
results and go on) is the only part a cancel may interrupt, and it is interrupted once:
the first `cancel()` of a RUNNING or WAITING answer cancels it; every later one, and one
of a STARTING answer (its task has not run yet), only records the request. The *life*
task runs the generation, then ends the answer in a shielded `finally` nobody cancels:
exactly one terminal event (`done` or `error`) logged, the answer saved once (whole, or
cut off and marked incomplete), the answer finished (which clears the session's active
answer) and its lease released, whatever arrived when. Two ends log nothing: a lost
lease (another instance writes the answer now) and a hand-over at shutdown with a shared
log (another instance continues).

The answer is in its session once: an `AnswerSaver` appends it (at its first text when
growing saves are on, else at its end) and replaces it in place from then on, so a
killed single instance leaves what had come in the store, marked incomplete. A paused
answer is there as its turn with the tool calls (incomplete while it waits: the next
request never sends calls without results), then once resumed that turn whole, the tool
turns, and the next turn, saved by the saver that follows (`AnswerSaver.following`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dskit.client._types import ChatResult, StreamEvent
from dskit.gateway._errors import logged_error
from dskit.gateway.answers._cache import CacheRequest
from dskit.gateway.answers._codec import ANSWER_KEY
from dskit.gateway.answers._sources import AnswerSource
from dskit.gateway.backends._redis_log import LeaseLostError, stop_if_cancelled
from dskit.gateway.backends._tool_results import (
    calls_tools,
    tool_timeout,
    tool_turns,
    tool_wait_payload,
)
from dskit.session._core import (
    GROWING,
    MAX_REBASES,
    SessionCore,
    Throttle,
    rebases,
    worth_keeping,
)
from dskit.store import SessionConflictError, SessionRecord, SessionStore, StoredMessage

Write = Callable[[], Awaitable[None]]

if TYPE_CHECKING:
    from dskit.gateway.answers._context import AnswerContext

logger = logging.getLogger("dskit.gateway")
CANCELLED = orjson.dumps({"message": "the answer was cancelled", "type": "cancelled",
                          "code": "cancelled", "status": 499})  # fmt: skip


class AnswerState(enum.Enum):
    STARTING = "starting"  # created and logged; its task has not run yet
    RUNNING = "running"  # generating: a cancel interrupts it
    WAITING = "waiting"  # paused for client-side tool results: a cancel interrupts it
    CANCELLING = "cancelling"  # a cancel was asked for; the answer ends cancelled
    ENDING = "ending"  # the generation is over; the answer is being saved and closed
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"  # an error, or a lost lease / hand-over (ended elsewhere)


TERMINAL = frozenset({AnswerState.FINISHED, AnswerState.CANCELLED, AnswerState.FAILED})
_S = AnswerState
# every move an answer may make (FAILED from anywhere alive: an end that itself failed)
TRANSITIONS: dict[AnswerState, frozenset[AnswerState]] = {
    _S.STARTING: frozenset({_S.RUNNING, _S.CANCELLING, _S.ENDING, _S.FAILED}),
    _S.RUNNING: frozenset({_S.WAITING, _S.CANCELLING, _S.ENDING, _S.FAILED}),
    _S.WAITING: frozenset({_S.RUNNING, _S.CANCELLING, _S.ENDING, _S.FAILED}),
    _S.CANCELLING: frozenset({_S.ENDING, _S.FAILED}),
    _S.ENDING: TERMINAL,
    **{state: frozenset() for state in TERMINAL},
}

# the states a cancel still acts on (a caller's cancel of one shutdown is stopping counts)
STOPPABLE = frozenset({_S.STARTING, _S.RUNNING, _S.WAITING, _S.CANCELLING})
# the states whose generation task a first cancel interrupts
INTERRUPTIBLE = frozenset({_S.RUNNING, _S.WAITING})


class TransitionError(RuntimeError):
    """A move `TRANSITIONS` does not allow (a bug, never a caller's doing)."""


@dataclass(frozen=True, slots=True)
class AnswerJob:
    """What a background answer needs: the session as it stands and how to call upstream."""

    answer_id: str
    record: SessionRecord
    messages: list[dict[str, Any]]  # what is sent upstream (see `upstream_messages`)
    extra_headers: Mapping[str, str]
    callback_url: str | None
    started: float
    principal: str = ""  # who asked (the cache is theirs); "" for a takeover (no cache)


@dataclass(frozen=True, slots=True)
class Opened:
    """Where an answer comes from, and what it is cached under once it ends well."""

    source: AnswerSource
    key: CacheRequest | None  # None: not to be stored (no cache, or it came from there)
    lookup: str | None  # the cache lookup's result; None: the request skips the cache


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


def text_mark(event: StreamEvent) -> int:
    """A logged event's share of the answer's text (see `ANSWER_KEY` in `_views.py`)."""
    if event.type == "content":
        return len(event.text)
    if event.type == "reasoning":
        return -len(event.text)
    return 0


def turn_of(result: ChatResult, incomplete: bool = False) -> dict[str, Any]:
    message = result.to_message()
    return {**message, "incomplete": incomplete, "usage": _usage(result)}


def _usage(result: ChatResult) -> dict[str, Any] | None:
    return result.usage.to_dict() if result.usage else None


def done_payload(result: ChatResult) -> dict[str, Any]:
    return {"finish_reason": result.finish_reason, "usage": _usage(result),
            "message": turn_of(result)}  # fmt: skip


def error_payload(
    gw: AnswerContext, exc: BaseException, answer_id: str, what: str = "failed"
) -> bytes:
    """An answer's `error` event for a failure: the gateway's error shape, counted and
    logged once."""
    error = logged_error(exc, f"answer {answer_id}")
    gw.metrics.errors.labels(error.kind).inc()
    logger.warning("answer %s %s: %s", answer_id, what, error.message)
    return orjson.dumps({**error.body()["error"], "status": error.status})


async def close_answer(gw: AnswerContext, job: AnswerJob, worker: str, status: str) -> None:
    """Finish the answer and release its lease (both, whatever fails), then call back."""
    try:
        await gw.log.finish(job.answer_id)
    finally:
        await gw.log.release(job.answer_id, worker)
    logger.info("answer %s %s", job.answer_id, status)
    if job.callback_url:
        await gw.send_callback(job.callback_url, job.answer_id, job.record.id)


class AnswerSaver:
    """Where one answer is in its session, and the writes that keep it there: appended
    once, then replaced in place. Growing saves (every `every` seconds, None: none) run
    shielded, so a cancel never leaves a write half known; a conflict is rebased onto the
    fresh session when what the write relies on is untouched (the session core's rule),
    else it is raised."""

    def __init__(
        self, store: SessionStore, record: SessionRecord, answer_id: str, every: float | None,
        landed: Callable[[], Awaitable[None]],
    ) -> None:  # fmt: skip
        """`landed`: waits until every event posted to the answer's log has landed (the
        store never leads the log), raising what failed."""
        self.store, self.answer_id, self.every, self.landed = store, answer_id, every, landed
        self.record = dataclasses.replace(record, messages=list(record.messages))
        self.throttle = Throttle(every) if every else None
        self.index: int | None = None  # where the answer is, once it is in the store
        self.marks: list[int] = []  # each logged event's share of the text
        self.final = False  # the end was saved: nothing more to write
        self.paused = False  # saved as a turn whose tool calls wait for results
        self._pending: asyncio.Future[None] | None = None

    def following(self) -> AnswerSaver:
        """The saver of the answer's next turn, after its tool turns: a new turn whose
        events come after every event logged so far."""
        saver = AnswerSaver(self.store, self.record, self.answer_id, self.every, self.landed)
        saver.marks = [0] * len(self.marks)
        return saver

    def logged(self, mark: int = 0) -> None:
        """Note an event just logged that is no part of a growing save (`tool_wait`)."""
        self.marks.append(mark)

    async def grow(self, event: StreamEvent, snapshot: Callable[[], ChatResult]) -> None:
        """Note an event just logged; save the answer so far when it is due."""
        self.logged(text_mark(event))
        if self.throttle is None or event.type not in GROWING or not self.throttle.due():
            return
        message = SessionCore.reply_message(snapshot(), incomplete=True)
        if self.index is None and not worth_keeping(message):
            self.throttle.last = None  # nothing to keep yet: the first text is saved at once
            return
        self._pending = asyncio.ensure_future(self._keep(message))
        await asyncio.shield(self._pending)

    async def _keep(self, message: StoredMessage) -> None:
        try:
            await self.save(message)
        except Exception as exc:  # the answer goes on; its end is saved (or fails) then
            logger.warning("answer %s: cannot keep it as it grows: %s", self.answer_id, exc)
            self.throttle = None

    async def settle(self) -> None:
        """Wait for a growing save in flight (a cancel does not stop it)."""
        if self._pending is not None:
            await asyncio.wait([self._pending])

    async def end(self, message: StoredMessage, meta: dict[str, Any]) -> None:
        """Save the answer's end (once): it replaces what was kept as it grew."""
        await self.settle()
        await self.save(message, meta)
        self.final, self.paused = True, False

    async def pause(self, message: StoredMessage, meta: dict[str, Any]) -> None:
        """Save the turn whose tool calls the answer now waits for: incomplete until
        their results are in, so a request made meanwhile sends no call without its
        result. Shielded (as growing saves are): a cancel never leaves it half known."""
        await self.settle()

        async def write() -> None:
            await self.save(message, meta)
            self.final = self.paused = True

        await self._shielded(write)

    async def resume(
        self, message: StoredMessage, meta: dict[str, Any], turns: list[StoredMessage]
    ) -> None:
        """The results are in: the turn saved whole, then the tool turns after it, both
        shielded from a cancel."""

        async def writes() -> None:
            await self.save(message, meta)
            await self._rebased(lambda: self._append(turns))
            self.paused = False  # in the shielded part: after a cancel, settle() tells

        await self._shielded(writes)

    async def _shielded(self, write: Write) -> None:
        self._pending = asyncio.ensure_future(write())
        await asyncio.shield(self._pending)

    async def save(self, message: StoredMessage, meta: dict[str, Any] | None = None) -> None:
        await self.landed()  # what is saved is in the log first
        stamp = {"id": self.answer_id, "seq": len(self.marks), **(meta or {})}
        if message.incomplete:
            stamp["marks"] = list(self.marks)
        message = dataclasses.replace(message, message={**message.message, ANSWER_KEY: stamp})
        await self._rebased(lambda: self._write(message))

    async def _rebased(self, write: Write) -> None:
        """`write`, rebased onto the fresh session after a conflict while what it relies
        on is untouched (the session core's rule), else the conflict is raised."""
        for _ in range(MAX_REBASES):
            try:
                await write()
                return
            except SessionConflictError:
                fresh = await self.store.aload(self.record.id)
                if not rebases(self.record.messages, fresh.messages, self.index):
                    raise
                self.record = fresh
        await write()

    async def _append(self, turns: list[StoredMessage]) -> None:
        record = self.record
        record.version = await self.store.aappend(record.id, turns, expected_version=record.version)
        record.messages.extend(turns)

    async def _write(self, message: StoredMessage) -> None:
        record = self.record
        if self.index is None:
            version = await self.store.aappend(
                record.id, [message], expected_version=record.version
            )
            record.messages.append(message)
            self.index = len(record.messages) - 1
        else:
            version = await self.store.areplace(
                record.id, self.index, message, expected_version=record.version
            )
            record.messages[self.index] = message
        record.version = version


class Answer:
    """One answer from start to end; see the module docstring for its states."""

    def __init__(
        self, gw: AnswerContext, job: AnswerJob, worker: str,
        opener: Callable[[], Awaitable[Opened]],
        handing_over: Callable[[], bool], save_every: float | None = None,
        continuer: Callable[[SessionRecord], Awaitable[Opened]] | None = None,
    ) -> None:  # fmt: skip
        """`opener`: the answer's source; `continuer`: the source that goes on after tool
        results, from the session as it stands then (None: the answer cannot pause, its
        tool calls end it)."""
        self.gw, self.job, self.worker = gw, job, worker
        self.state = AnswerState.STARTING
        self._opener, self._continuer, self._handing_over = opener, continuer, handing_over
        self._generation: asyncio.Task[None] | None = None
        self._opened: Opened | None = None
        landed = functools.partial(gw.log.flush, job.answer_id)
        self.saver = AnswerSaver(gw.store, job.record, job.answer_id, save_every, landed)
        self._ended = asyncio.Event()
        self._by_caller = False  # a caller cancelled it: it ends cancelled, never handed over

    @property
    def answer_id(self) -> str:
        return self.job.answer_id

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._live(), name=f"answer-{self.answer_id}")

    def cancel(self, *, by_caller: bool = True) -> None:
        """Ask the answer to stop. Only the first request of a running answer interrupts
        its generation; any other is a no-op (already asked, already ending). A caller's
        cancel (not shutdown's) also keeps the answer from being handed over."""
        if by_caller and self.state in STOPPABLE:
            self._by_caller = True
        if self.state is AnswerState.STARTING:
            self._move(AnswerState.CANCELLING)
        elif self.state in INTERRUPTIBLE:
            self._move(AnswerState.CANCELLING)
            assert self._generation is not None
            self._generation.cancel()

    def _move(self, to: AnswerState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise TransitionError(f"answer {self.answer_id}: {self.state.value} -> {to.value}")
        self.state = to

    async def ended(self) -> AnswerState:
        """Wait for the end; the terminal state."""
        await self._ended.wait()
        return self.state

    # ---- the life task ----------------------------------------------------------------

    async def _live(self) -> None:
        self.gw.metrics.active_generations.inc()
        try:
            if self.state is AnswerState.STARTING:
                self._move(AnswerState.RUNNING)
                name = f"generate-{self.answer_id}"
                self._generation = asyncio.create_task(self._generate(), name=name)
                await asyncio.wait([self._generation])  # waiting is not cancelling it
        finally:  # cancelled itself (the loop closing): still end the answer, shielded
            await asyncio.shield(asyncio.ensure_future(self._end()))

    async def _generate(self) -> None:
        """Log the source's events; while its output calls client-side tools, pause for
        their results and go on with the next source."""
        self._opened = await self._opener()
        while True:
            source = self._opened.source
            await self._log_events(source)
            if self._continuer is None or not calls_tools(source.snapshot()):
                return
            result = await source.final()
            await self._pause(result)
            await self._resume(result, await self._wait(result))

    async def _log_events(self, source: AnswerSource) -> None:
        job, gw = self.job, self.gw
        first = not self.saver.marks  # time to first token: of the answer's first source
        task = asyncio.current_task()
        async for event in source.events():
            entry = event_payload(event)
            if entry is not None:
                if first and entry[0] != "usage":
                    first = False
                    gw.metrics.ttft.labels("sessions").observe(time.monotonic() - job.started)
                gw.log.post(job.answer_id, *entry)  # it lands in order; the generation reads on
                await self.saver.grow(event, source.snapshot)  # a due save: after the posts
                stop_if_cancelled(task)
            elif event.type == "resumed":
                gw.metrics.resumes.inc()
            elif event.type == "retrying":
                gw.metrics.retries.inc()

    # ---- the pause for client-side tool results ---------------------------------------

    async def _pause(self, result: ChatResult) -> None:
        """Save the turn that calls the tools, open the answer's mailbox, then log
        `tool_wait` (so whoever sees it can load the turn and send results): WAITING."""
        gw, calls = self.gw, [call.id for call in result.tool_calls]
        seconds = gw.settings.tool_result_timeout_seconds
        message = SessionCore.reply_message(result, incomplete=True)
        await self.saver.pause(message, {"finish_reason": "tool_calls", "waiting": calls})
        gw.metrics.count_usage(result.usage)
        await gw.tool_results.open(self.answer_id, calls, seconds)
        try:
            self._move(AnswerState.WAITING)
            await gw.log.append(self.answer_id, "tool_wait", tool_wait_payload(result, seconds))
            self.saver.logged()
            stop_if_cancelled()
        except BaseException:  # it will not wait (`wait` closes it): nobody may put in it
            await asyncio.shield(gw.tool_results.close(self.answer_id))
            raise

    async def _wait(self, result: ChatResult) -> dict[str, str]:
        """Every call's result, or `tool_timeout` once the deadline passed."""
        seconds = self.gw.settings.tool_result_timeout_seconds
        results = await self.gw.tool_results.wait(self.answer_id, seconds)
        if results is None:
            raise tool_timeout([call.id for call in result.tool_calls], seconds)
        return results

    async def _resume(self, result: ChatResult, results: Mapping[str, str]) -> None:
        """Store the turn whole and the results as tool turns (in the calls' order), then
        go on RUNNING with a new upstream request from the session as it is now."""
        turns = tool_turns([call.id for call in result.tool_calls], results)
        whole = SessionCore.reply_message(result)
        await self.saver.resume(whole, {"finish_reason": "tool_calls"}, turns)
        if self.state is not AnswerState.WAITING:  # cancelled (redis-py may swallow it)
            raise asyncio.CancelledError
        self._move(AnswerState.RUNNING)
        await self._close_source()
        self._opened, self.saver = None, self.saver.following()
        assert self._continuer is not None
        self._opened = await self._continuer(self.saver.record)

    # ---- the end: runs once, never interrupted -------------------------------------------

    async def _end(self) -> None:
        generation = self._generation
        try:
            if generation is not None and not generation.done():
                generation.cancel()  # only when the life task itself was cancelled
                await asyncio.wait([generation])
            self._move(AnswerState.ENDING)
            self._move(await self._conclude(generation, cancelled_by_caller=self._by_caller))
        except BaseException:
            if self.state not in TERMINAL:
                self._move(AnswerState.FAILED)
            raise
        finally:
            self.gw.metrics.active_generations.dec()
            self._ended.set()

    async def _conclude(
        self, generation: asyncio.Task[None] | None, *, cancelled_by_caller: bool = False
    ) -> AnswerState:
        """The terminal event, the save, finish and release, by how the generation ended.
        An answer a caller cancelled ends cancelled, even when shutdown comes next: it is
        never handed to another instance to go on with."""
        exc: BaseException | None = asyncio.CancelledError()
        if generation is not None and not generation.cancelled():
            exc = generation.exception()
        elif not cancelled_by_caller and self._handing_over():  # another instance goes on
            await self._close_source()
            await self._hand_over()
            return AnswerState.FAILED
        try:
            if isinstance(exc, LeaseLostError):
                raise exc
            outcome = await (self._complete() if exc is None else self._fail(exc))
        except LeaseLostError as lost:  # another instance writes this answer now: stop
            logger.warning("answer %s: %s", self.answer_id, lost)
            await self._close_source()
            with contextlib.suppress(Exception):
                await self.gw.log.release(self.answer_id, self.worker)
            return AnswerState.FAILED
        await self._close_source()
        try:
            await close_answer(self.gw, self.job, self.worker, outcome.value)
        except Exception as problem:  # the log or callback out of reach: logged, not raised
            logger.warning("answer %s: closing failed: %s", self.answer_id, problem)
        return outcome

    async def _complete(self) -> AnswerState:
        """A whole answer: saved, cached, then `done` (or, failing that, an `error`)."""
        gw, opened = self.gw, self._opened
        assert opened is not None
        try:
            result = await opened.source.final()
            if not opened.source.saved:  # the save waits for the posts to land
                meta = {"finish_reason": result.finish_reason}
                await self.saver.end(SessionCore.reply_message(result), meta)
            else:  # nothing to save: no `done` after a gap all the same
                await self.saver.landed()
            await gw.cache.store(opened.key, result)
        except LeaseLostError:
            raise
        except Exception as exc:
            return await self._fail(exc)
        gw.metrics.count_usage(result.usage)
        gw.metrics.latency.labels("sessions").observe(time.monotonic() - self.job.started)
        done = done_payload(result)
        if opened.source.cached:
            done["cached"] = True
        await self._log_end("done", orjson.dumps(done))
        return AnswerState.FINISHED

    async def _fail(self, exc: BaseException) -> AnswerState:
        """A cut-off answer: what came is saved (marked incomplete, with how it ended),
        then an `error`."""
        source = self._opened.source if self._opened is not None else None
        partial = source.snapshot() if source is not None else ChatResult()
        message = SessionCore.reply_message(partial, incomplete=True)
        cancelled = isinstance(exc, asyncio.CancelledError)
        payload = CANCELLED if cancelled else error_payload(self.gw, exc, self.answer_id)
        saver = self.saver
        await saver.settle()
        # the session's rule for a cut-off: kept if it brought anything (or was kept
        # already); a turn paused for tool results is kept, cut off, with how it ended
        unsaved = saver.paused or not saver.final
        if unsaved and (saver.index is not None or worth_keeping(message)):
            with contextlib.suppress(Exception):
                await saver.end(message, {"error": orjson.loads(payload)})
        await self._log_end("error", payload)
        return AnswerState.CANCELLED if cancelled else AnswerState.FAILED

    async def _log_end(self, kind: str, payload: bytes) -> None:
        """The terminal event; a log out of reach is logged and the answer still closed."""
        try:
            await self.gw.log.append(self.answer_id, kind, payload)
        except LeaseLostError:
            raise
        except Exception as problem:
            logger.warning("answer %s: cannot log its end: %s", self.answer_id, problem)

    async def _close_source(self) -> None:
        if self._opened is not None:
            try:
                await self._opened.source.aclose()
            except Exception as exc:
                logger.warning("answer %s: closing its source failed: %s", self.answer_id, exc)

    async def _hand_over(self) -> None:
        with contextlib.suppress(Exception):
            await self.gw.log.release(self.answer_id, self.worker)
        logger.info("answer %s handed over to another instance", self.answer_id)
