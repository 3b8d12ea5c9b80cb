"""How stored sessions and logged events look on the wire (JSON bodies and SSE frames).

An answer the gateway saves carries `ANSWER_KEY` in its stored message (never sent
upstream: only the wire keys are): its answer id, how many events had been logged when
it was saved (`seq`) and, while it is incomplete, each logged event's share of the text
(`marks`: + content length, - reasoning length, 0 for anything else). After a restart the
memory log is empty, and `stored_entries` rebuilds the answer's events from the store:
the text events a client has not seen, then one terminal event (`done` for a whole
answer; for a cut-off one the `error` it ended with, or `interrupted` when the gateway
died before it ended), each with `saved`, the stored turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson

from dskit.gateway._flow import WriteMeter, sse_span_frame
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
ANSWER_KEY = "dskit_answer"
INTERRUPTED: dict[str, Any] = {
    "message": "the gateway stopped before the answer finished; what it had saved is kept, "
    "marked incomplete", "type": "interrupted", "code": "interrupted", "status": 503,
}  # fmt: skip


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
    saved = data.get("saved")  # an answer known only to the store: what it had saved
    message = StoredTurn(role="assistant", **_turn_fields(saved)) if saved else None
    return AnswerResult(
        answer_id=answer_id, session_id=session_id, status=status, error=error, message=message
    )


def _turn_fields(message: dict[str, Any]) -> dict[str, Any]:
    keys = ("content", "reasoning_content", "tool_calls", "incomplete", "usage")
    return {k: message[k] for k in keys if k in message}


# ---- answers known only to the store (the log forgot them: a restart, its TTL) ----------


def answer_of(stored: StoredMessage) -> str | None:
    meta = stored.message.get(ANSWER_KEY)
    return str(meta["id"]) if isinstance(meta, dict) and "id" in meta else None


def stored_answer(record: SessionRecord, answer_id: str) -> StoredMessage | None:
    """The turn answer `answer_id` saved in this session, if it did."""
    for stored in reversed(record.messages):
        if answer_of(stored) == answer_id:
            return stored
    return None


def stored_entries(stored: StoredMessage, after: int) -> list[LogEntry]:
    """A stored answer's events after `after`: the text it was logged as, then its end."""
    meta = stored.message[ANSWER_KEY]
    entries = _text_entries(stored, meta.get("marks") or [], after)
    turn = {k: v for k, v in stored.message.items() if k != ANSWER_KEY}
    turn.update(incomplete=stored.incomplete, usage=stored.usage)
    if stored.incomplete:
        kind, end = "error", {**(meta.get("error") or INTERRUPTED), "saved": turn}
    else:
        kind = "done"
        end = {"finish_reason": meta.get("finish_reason"), "usage": stored.usage,
               "message": turn, "saved": turn}  # fmt: skip
    seq = max(int(meta.get("seq", 0)), after) + 1
    return [*entries, LogEntry(seq, kind, orjson.dumps(end))]


def _text_entries(stored: StoredMessage, marks: list[int], after: int) -> list[LogEntry]:
    texts = {"content": stored.content, "reasoning": stored.message.get("reasoning_content") or ""}
    used = {"content": 0, "reasoning": 0}
    entries = []
    for seq, mark in enumerate(marks, 1):
        kind = "content" if mark > 0 else "reasoning"
        start = used[kind]
        used[kind] += abs(mark)
        if mark and seq > after:
            text = texts[kind][start : used[kind]]
            entries.append(LogEntry(seq, kind, orjson.dumps({"text": text})))
    return entries


async def replay_stream(
    answer_id: str, entries: list[LogEntry], retry_ms: int
) -> AsyncIterator[bytes]:
    """The SSE body of a stored answer: its events, then the end of the stream."""
    yield f"retry: {retry_ms}\n\n".encode()
    yield b"".join(sse_frame(answer_id, entry) for entry in entries)
