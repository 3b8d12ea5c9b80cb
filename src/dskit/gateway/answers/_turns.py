"""A session's turns, whoever asks (the HTTP routes, gRPC): create a session, send a
user turn and start its answer, find an answer the caller may read. Errors are
`GatewayError`s; each surface renders them its way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from dskit.client._async import AsyncDeepSeek
from dskit.client._core import check_chat_params
from dskit.gateway._errors import GatewayError, not_found
from dskit.gateway._schemas import SessionCreate
from dskit.gateway.access._owners import check_owner, owned_record
from dskit.gateway.answers._codec import stored_answer
from dskit.gateway.answers._quota import charge_tokens
from dskit.gateway.answers._runner import AnswerRunner, upstream_messages
from dskit.gateway.backends._keys import KeyBackend
from dskit.gateway.backends._limits import RateLimiter
from dskit.gateway.backends._log import AnswerInfo, StreamLog
from dskit.gateway.wire._relay import check_encodable
from dskit.store import SessionRecord, SessionStore, StoredMessage


class TurnParts(Protocol):
    """What a session's turns are made with (the composed `Gateway` has these)."""

    @property
    def store(self) -> SessionStore: ...
    @property
    def keys(self) -> KeyBackend: ...
    @property
    def client(self) -> AsyncDeepSeek: ...
    @property
    def log(self) -> StreamLog: ...
    @property
    def runner(self) -> AnswerRunner: ...
    @property
    def token_limiter(self) -> RateLimiter | None: ...


async def new_session(gw: TurnParts, who: str, body: SessionCreate) -> SessionRecord:
    """A stored conversation owned by `who` (a bad model or parameter fails now, not at
    the first turn)."""
    params = body.parameters.model_dump(exclude_none=True)
    check_encodable([], params)
    check_chat_params({"model": body.model, **params})
    await gw.client.require_model(body.model)
    record = SessionRecord(
        title=body.title or "", model=body.model, system=body.system, params=params
    )
    record = await gw.store.acreate(record)
    gw.keys.own(record.id, who)
    return record


async def start_turn(
    gw: TurnParts, who: str, session_id: str, content: str, headers: Mapping[str, str],
    callback: str | None = None,
) -> str:  # fmt: skip
    """Store the user's turn and start its answer (its id returned): 404 for a session
    `who` does not own, 409 while another answer is being generated in it. The POST
    route, the WebSocket and gRPC all begin answers here."""
    record = await _idle_record(gw, who, session_id)
    user = StoredMessage({"role": "user", "content": content})
    return await _start(gw, who, record, user, headers, callback)


async def tool_result_turn(
    gw: TurnParts, who: str, session_id: str, result: StoredMessage, headers: Mapping[str, str]
) -> str | None:
    """Store a client-side tool's result; once every call of the last answer has one, start
    the answer that continues (its id; None while results are still missing)."""
    record = await _idle_record(gw, who, session_id)
    pending = _pending_calls(record.messages)
    if result.message.get("tool_call_id") not in pending:
        raise GatewayError(
            400, "no tool call of this session is waiting for that tool_call_id",
            param="tool_call_id", code="unknown_tool_call",
        )  # fmt: skip
    if len(pending) > 1:
        await gw.store.aappend(session_id, [result], expected_version=record.version)
        return None
    return await _start(gw, who, record, result, headers, None)


def _pending_calls(messages: list[StoredMessage]) -> set[str]:
    """The ids of the last answer's tool calls that have no result yet."""
    answered: set[str] = set()
    for stored in reversed(messages):
        if stored.role == "tool":
            answered.add(str(stored.message.get("tool_call_id")))
            continue
        calls = stored.message.get("tool_calls") if stored.role == "assistant" else None
        return {str(c.get("id")) for c in calls or []} - answered
    return set()


async def _idle_record(gw: TurnParts, who: str, session_id: str) -> SessionRecord:
    record = await owned_record(gw, who, session_id)
    if await gw.log.active(session_id):
        raise GatewayError(
            409, "an answer is being generated in this session; wait or cancel it",
            "conflict_error", code="answer_in_progress",
        )  # fmt: skip
    return record


async def _start(
    gw: TurnParts, who: str, record: SessionRecord, turn: StoredMessage,
    headers: Mapping[str, str], callback: str | None,
) -> str:  # fmt: skip
    record.messages.append(turn)
    info = await gw.client.model_info(record.model)
    messages = upstream_messages(record, info)  # as ChatSession would; too big: a 400, unstored
    await charge_tokens(gw.token_limiter, who, messages)  # what is sent, as for /v1/chat
    record.version = await gw.store.aappend(record.id, [turn], expected_version=record.version)
    return await gw.runner.start(record, messages, dict(headers), callback, who)


async def find_answer(
    gw: TurnParts, who: str, session_id: str, answer_id: str
) -> AnswerInfo | StoredMessage:
    """The answer, if it is of this session and the caller owns the session: as the log
    knows it, else as the store saved it (after a restart); else 404."""
    check_owner(gw, who, session_id)
    info = await gw.log.info(answer_id)
    if info is not None and info.session_id == session_id:
        return info
    if info is None:
        stored = stored_answer(await gw.store.aload(session_id), answer_id)
        if stored is not None:
            return stored
    raise not_found("answer")


async def answer_of(gw: TurnParts, who: str, session_id: str, answer_id: str) -> AnswerInfo:
    """The answer as the log knows it (a stream to follow); one the log lost in a restart
    is a 409 that says where its saved text is."""
    found = await find_answer(gw, who, session_id, answer_id)
    if isinstance(found, StoredMessage):
        raise GatewayError(
            409, f"answer {answer_id} ended when the gateway restarted; its saved text is in "
            f"GET /v1/sessions/{session_id}", "conflict_error", code="answer_interrupted",
        )  # fmt: skip
    return found
