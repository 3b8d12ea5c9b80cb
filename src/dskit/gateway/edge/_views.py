"""How stored sessions and logged events look on the wire (JSON bodies and SSE frames);
how answers are kept and told is `answers/_codec.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from dskit.gateway._metrics import Metrics
from dskit.gateway._schemas import (
    EventOut,
    EventPage,
    SessionDetail,
    SessionSummary,
    StoredTurn,
)
from dskit.gateway.answers._codec import answer_of, event_id
from dskit.gateway.backends._log import LogEntry, StreamLog, UnknownAnswerError
from dskit.gateway.edge._flow import WriteMeter, sse_frame, sse_span_frame
from dskit.store import SessionInfo, SessionRecord, StoredMessage

HEARTBEAT = b": heartbeat\n\n"


def summary(info: SessionInfo, active: str | None) -> SessionSummary:
    return SessionSummary(
        id=info.id, title=info.title, model=info.model, created=info.created,
        updated=info.updated, message_count=info.message_count, active_answer=active,
    )  # fmt: skip


def turn(stored: StoredMessage) -> StoredTurn:
    message = stored.message
    content = message.get("content")
    return StoredTurn(
        role=stored.role, content=content if isinstance(content, str) else None,
        reasoning_content=message.get("reasoning_content"),
        tool_calls=message.get("tool_calls"), incomplete=stored.incomplete,
        usage=stored.usage, created=stored.created, answer_id=answer_of(stored),
    )  # fmt: skip


def detail(record: SessionRecord, active: str | None) -> SessionDetail:
    return SessionDetail(
        **summary(record.info(), active).model_dump(), system=record.system,
        parameters=record.params, messages=[turn(m) for m in record.messages],
    )  # fmt: skip


async def sse_stream(
    log: StreamLog, answer_id: str, after: int, heartbeat: float, retry_ms: int,
    metrics: Metrics, meter: WriteMeter | None = None,
) -> AsyncIterator[bytes]:  # fmt: skip
    """The SSE body for an answer from `after` on: what was logged, then the live rest.
    With `meter` (measuring this body's writes: `WriteMeter.metered`), a client that
    falls behind is waited for, and what piled up meanwhile goes out merged (`_flow.py`)."""
    metrics.active_streams.inc()
    try:
        yield f"retry: {retry_ms}\n\n".encode()
        async for entries in follow(log, answer_id, after, heartbeat):
            if not entries:
                yield HEARTBEAT
            elif meter is None:
                yield b"".join(sse_frame(answer_id, entry) for entry in entries)
            else:
                yield b"".join(sse_span_frame(answer_id, s) for s in meter.spans(entries))
                await meter.room()  # before the next read: what piles up meanwhile is merged
    finally:
        metrics.active_streams.dec()


async def follow(
    log: StreamLog, answer_id: str, after: int, wait: float
) -> AsyncIterator[list[LogEntry]]:
    """An answer's events after `after`, in batches as they are logged (what was logged
    first), an empty batch each `wait` seconds without news, until the answer has ended
    (or is unknown). Every stream of an answer reads it so: SSE, gRPC."""
    while True:
        try:
            page = await log.read(answer_id, after, wait=wait)
        except UnknownAnswerError:
            return
        if page.entries:
            after = page.entries[-1].seq
            yield page.entries
        elif page.finished:
            return
        else:
            yield []


def event_page(answer_id: str, entries: list[LogEntry], finished: bool, after: int) -> EventPage:
    events = [
        EventOut(id=event_id(answer_id, e.seq), seq=e.seq, type=e.kind, data=orjson.loads(e.data))
        for e in entries
    ]
    next_after = entries[-1].seq if entries else after
    return EventPage(answer_id=answer_id, events=events, finished=finished, next_after=next_after)


async def replay_stream(
    answer_id: str, entries: list[LogEntry], retry_ms: int
) -> AsyncIterator[bytes]:
    """The SSE body of a stored answer: its events, then the end of the stream."""
    yield f"retry: {retry_ms}\n\n".encode()
    yield b"".join(sse_frame(answer_id, entry) for entry in entries)
