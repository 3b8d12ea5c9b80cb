"""How stored sessions and logged events look on the wire (JSON bodies and SSE frames)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson

from dskit.gateway._metrics import Metrics
from dskit.gateway._schemas import (
    AnswerResult,
    ErrorDetail,
    EventOut,
    EventPage,
    SessionDetail,
    SessionSummary,
    StoredTurn,
)
from dskit.gateway._streamlog import LogEntry, StreamLog, UnknownAnswerError
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
        usage=stored.usage, created=stored.created,
    )  # fmt: skip


def detail(record: SessionRecord, active: str | None) -> SessionDetail:
    return SessionDetail(
        **summary(record.info(), active).model_dump(), system=record.system,
        parameters=record.params, messages=[turn(m) for m in record.messages],
    )  # fmt: skip


def event_id(answer_id: str, seq: int) -> str:
    return f"{answer_id}:{seq}"


def parse_event_id(value: str, answer_id: str | None = None) -> tuple[str, int] | None:
    """`<answer_id>:<seq>` -> (answer_id, seq); None when malformed or for another answer."""
    head, _, tail = value.strip().rpartition(":")
    if not head or not tail.isdigit() or len(tail) > 12:
        return None
    if answer_id is not None and head != answer_id:
        return None
    return head, int(tail)


def sse_frame(answer_id: str, entry: LogEntry) -> bytes:
    return (
        b"id: " + f"{answer_id}:{entry.seq}".encode() + b"\nevent: " + entry.kind.encode()
        + b"\ndata: " + entry.data + b"\n\n"
    )  # fmt: skip


async def sse_stream(
    log: StreamLog, answer_id: str, after: int, heartbeat: float, retry_ms: int, metrics: Metrics
) -> AsyncIterator[bytes]:
    """The SSE body for an answer from `after` on: what was logged, then the live rest."""
    metrics.active_streams.inc()
    try:
        yield f"retry: {retry_ms}\n\n".encode()
        async for entries in follow(log, answer_id, after, heartbeat):
            if entries:
                yield b"".join(sse_frame(answer_id, entry) for entry in entries)
            else:
                yield HEARTBEAT
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


async def answer_result(log: StreamLog, answer_id: str, session_id: str) -> AnswerResult:
    """A finished answer's result, from its last logged event."""
    return result_from(answer_id, session_id, await log.last(answer_id))


def result_from(answer_id: str, session_id: str, last: LogEntry | None) -> AnswerResult:
    """The result an answer's last logged event (`done` or `error`) tells."""
    data: dict[str, Any] = orjson.loads(last.data) if last else {}
    if last is not None and last.kind == "done":
        return AnswerResult(
            answer_id=answer_id, session_id=session_id, status="completed",
            message=StoredTurn(role="assistant", **_turn_fields(data.get("message") or {})),
            finish_reason=data.get("finish_reason"), usage=data.get("usage"),
        )  # fmt: skip
    status: Literal["cancelled", "failed"] = (
        "cancelled" if data.get("type") == "cancelled" else "failed"
    )
    error = ErrorDetail(
        message=str(data.get("message", "the answer did not finish")),
        type=str(data.get("type", "server_error")), param=data.get("param"),
        code=data.get("code"),
    )  # fmt: skip
    return AnswerResult(answer_id=answer_id, session_id=session_id, status=status, error=error)


def _turn_fields(message: dict[str, Any]) -> dict[str, Any]:
    keys = ("content", "reasoning_content", "tool_calls", "incomplete", "usage")
    return {k: message[k] for k in keys if k in message}
