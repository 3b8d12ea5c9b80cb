"""A session's turns, whoever asks (the HTTP routes, gRPC): create a session, send a
user turn and start its answer, find an answer the caller may read. Errors are
`GatewayError`s; each surface renders them its way."""

from __future__ import annotations

from collections.abc import Mapping

from dskit.client._core import check_chat_params
from dskit.gateway._answers import upstream_messages
from dskit.gateway._deps import check_owner, owned_record
from dskit.gateway._errors import GatewayError, not_found
from dskit.gateway._relay import check_encodable
from dskit.gateway._scale import charge_tokens
from dskit.gateway._schemas import SessionCreate
from dskit.gateway._state import Gateway
from dskit.gateway._streamlog import AnswerInfo
from dskit.store import SessionRecord, StoredMessage


async def new_session(gw: Gateway, who: str, body: SessionCreate) -> SessionRecord:
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
    gw: Gateway, who: str, session_id: str, content: str, headers: Mapping[str, str],
    callback: str | None = None,
) -> str:  # fmt: skip
    """Store the user's turn and start its answer (its id returned): 404 for a session
    `who` does not own, 409 while another answer is being generated in it."""
    record = await owned_record(gw, who, session_id)
    if await gw.log.active(session_id):
        raise GatewayError(
            409, "an answer is being generated in this session; wait or cancel it",
            "conflict_error", code="answer_in_progress",
        )  # fmt: skip
    user = StoredMessage({"role": "user", "content": content})
    record.messages.append(user)
    info = await gw.client.model_info(record.model)
    messages = upstream_messages(record, info)  # as ChatSession would; too big: a 400, unstored
    await charge_tokens(gw.token_limiter, who, messages)  # what is sent, as for /v1/chat
    record.version = await gw.store.aappend(session_id, [user], expected_version=record.version)
    return await gw.runner.start(record, messages, headers, callback, who)


async def answer_of(gw: Gateway, who: str, session_id: str, answer_id: str) -> AnswerInfo:
    """The answer, if it is of this session and `who` owns the session; else 404."""
    check_owner(gw, who, session_id)
    info = await gw.log.info(answer_id)
    if info is None or info.session_id != session_id:
        raise not_found("answer")
    return info
