"""The sessions API: conversations kept by the gateway, answered in the background.

Event ids are `<answer_id>:<seq>` (seq from 1 within each answer). Streams of one answer:
`GET /v1/sessions/{id}/answers/{answer_id}/stream` (what EventSource reconnects to) and
`GET /v1/sessions/{id}/stream` (the session's current answer, or the one a
`Last-Event-ID` names: how a client of the streamed POST resumes).

An answer the log no longer knows (a restarted single instance, an expired log entry) is
answered from the store when the session holds what it saved: its stream and long poll
give the events a client has not seen and a terminal one (`done`, or an `error` of type
`interrupted` for an answer cut off by the restart), then end; never 404, never a hang.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
import pydantic
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from dskit.gateway._compose import Gateway
from dskit.gateway._errors import GatewayError, not_found
from dskit.gateway._schemas import (
    AnswerHandle,
    AnswerResult,
    EventPage,
    MessageCreate,
    SessionCreate,
    SessionDetail,
    SessionList,
    ToolResultAccepted,
    ToolResultCreate,
)
from dskit.gateway.access._owners import check_owner, owned_record
from dskit.gateway.answers._callbacks import check_callback_url
from dskit.gateway.answers._codec import answer_result, parse_event_id, result_from, stored_entries
from dskit.gateway.answers._turns import (
    answer_of,
    find_answer,
    new_session,
    start_turn,
    tool_result,
)
from dskit.gateway.edge._deps import (
    ID_PATTERN,
    AnswerId,
    GatewayDep,
    Limited,
    Principal,
    SessionId,
    SessionReader,
    caller_of,
    take_token,
    upstream_headers,
)
from dskit.gateway.edge._fast import FastRoute
from dskit.gateway.edge._flow import WriteMeter
from dskit.gateway.edge._response import EventStreamResponse, pieces
from dskit.gateway.edge._unsent import scope_probe
from dskit.gateway.edge._views import detail, event_page, replay_stream, sse_stream, summary
from dskit.store import StoredMessage

router = APIRouter(tags=["sessions"])
SSE_DOC: dict[int | str, Any] = {
    200: {
        "description": "SSE: events reasoning, content, tool_call, tool_wait, usage, done, "
        "error; every event has an id `<answer_id>:<seq>`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=200)]


@router.post("/v1/sessions", status_code=201, response_model=SessionDetail)
async def create_session(body: SessionCreate, gw: GatewayDep, who: Limited) -> SessionDetail:
    """Start a conversation owned by the caller."""
    return detail(await new_session(gw, who, body), None)


@router.get("/v1/sessions", response_model=SessionList)
async def list_sessions(
    gw: GatewayDep, who: Principal, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> SessionList:
    """The caller's sessions (by its own ids, whoever else has many), most recently
    updated first."""
    mine = gw.keys.sessions_of(who)
    infos = await gw.store.alist_sessions(limit, ids=mine) if mine else []
    return SessionList(data=[summary(i, await gw.log.active(i.id)) for i in infos])


@router.get("/v1/sessions/{session_id}", response_model=SessionDetail)
async def get_session(session_id: SessionId, gw: GatewayDep, who: SessionReader) -> SessionDetail:
    record = await owned_record(gw, who, session_id)
    return detail(record, await gw.log.active(session_id))


@router.delete("/v1/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, gw: GatewayDep, who: Principal) -> Response:
    """Delete a conversation (cancelling an answer in progress)."""
    await owned_record(gw, who, session_id)
    active = await gw.log.active(session_id)
    if active:
        await gw.runner.cancel(active)
    await gw.store.adelete(session_id)
    gw.keys.disown(session_id)
    return Response(status_code=204)


@router.post(
    "/v1/sessions/{session_id}/messages",
    responses={**SSE_DOC, 202: {"model": AnswerHandle, "description": "Answer started"}},
    response_model=AnswerResult,
)
async def post_message(
    session_id: SessionId, body: MessageCreate, request: Request, gw: GatewayDep, who: Limited
) -> Any:
    """Send a user turn: SSE (`stream`), 202 (`background`, `callback_url`) or blocking."""
    callback = check_callback_url(str(body.callback_url), gw.settings.callbacks) if (
        body.callback_url
    ) else None  # fmt: skip
    headers = upstream_headers(request, gw)
    answer_id = await start_turn(gw, who, session_id, body.content, headers, callback)
    if body.stream:
        return _sse(gw, request, answer_id, 0)
    if body.background or callback:
        return Response(
            orjson.dumps(_handle(session_id, answer_id).model_dump()), status_code=202,
            media_type="application/json",
        )  # fmt: skip
    return await _wait_result(gw, session_id, answer_id)


class FastSessionMessages(FastRoute):
    """`POST /v1/sessions/{id}/messages` with `stream`: the chat page's and every
    streaming client's turn, taken without FastAPI's dependency solving (see `_fast.py`).
    It runs `post_message` itself; a body that does not validate, and the background
    and blocking modes, go to the documented route."""

    path = "/v1/sessions/{session_id}/messages"
    _served = re.compile(rf"/v1/sessions/({ID_PATTERN.strip('^$')})/messages")

    def matches(self, path: str) -> bool:
        return self._served.fullmatch(path) is not None

    async def handle(self, request: Request) -> Response | None:
        found = self._served.fullmatch(request.scope["path"])
        assert found is not None  # `matches` let it in
        try:
            body = MessageCreate.model_validate_json(await request.body())
        except pydantic.ValidationError:
            return None
        if not body.stream:
            return None
        who = caller_of(request).principal
        await take_token(self.gw, who)
        response: Response = await post_message(found.group(1), body, request, self.gw, who)
        return response


def _handle(session_id: str, answer_id: str) -> AnswerHandle:
    base = f"/v1/sessions/{session_id}/answers/{answer_id}"
    return AnswerHandle(
        answer_id=answer_id, session_id=session_id, stream_url=f"{base}/stream",
        events_url=f"{base}/events",
    )  # fmt: skip


async def _wait_result(gw: Gateway, session_id: str, answer_id: str) -> AnswerResult:
    """Blocking mode: the finished answer, or its error as an error status."""
    after, last = 0, None
    while True:
        page = await gw.log.read(answer_id, after, wait=gw.settings.heartbeat_seconds)
        if page.entries:
            last = page.entries[-1]
            after = last.seq
        if page.finished:
            break
    result = result_from(answer_id, session_id, last)
    if result.status == "failed" and result.error is not None:
        status = int(orjson.loads(last.data).get("status", 502)) if last else 502
        raise GatewayError(status, result.error.message, result.error.type, code=result.error.code)
    return result


def _sse(gw: Gateway, request: Request, answer_id: str, after: int) -> EventStreamResponse:
    s = gw.settings
    meter = WriteMeter(scope_probe(request.scope)) if s.adaptive_flow else None
    body = sse_stream(
        gw.log, answer_id, after, s.heartbeat_seconds, s.sse_retry_ms, gw.metrics, meter
    )
    produce = pieces(body) if meter is None else meter.metered(pieces(body))
    return EventStreamResponse(produce, {"X-Answer-Id": answer_id})


def _stored_sse(
    gw: Gateway, answer_id: str, stored: StoredMessage, after: int
) -> EventStreamResponse:
    body = replay_stream(answer_id, stored_entries(stored, after), gw.settings.sse_retry_ms)
    return EventStreamResponse(pieces(body), {"X-Answer-Id": answer_id})


def _cursor(gw: Gateway, answer_id: str, last_event_id: str | None, after: int | None) -> int:
    if last_event_id:
        parsed = parse_event_id(last_event_id, answer_id)
        if parsed is None:
            raise GatewayError(
                400, f"Last-Event-ID must be '{answer_id}:<seq>'", param="Last-Event-ID"
            )
        gw.metrics.client_resumes.inc()
        return parsed[1]
    return after or 0


@router.get("/v1/sessions/{session_id}/answers/{answer_id}/stream", responses=SSE_DOC)
async def stream_answer(
    session_id: SessionId, answer_id: AnswerId, request: Request, gw: GatewayDep,
    who: SessionReader, last_event_id: LastEventId = None,
    after: Annotated[int | None, Query(ge=0, le=10**9)] = None,
) -> EventStreamResponse:  # fmt: skip
    """An answer as SSE from the start, from `after`, or after `Last-Event-ID`."""
    return await _answer_sse(gw, request, who, session_id, answer_id, last_event_id, after)


async def _answer_sse(
    gw: Gateway, request: Request, who: str, session_id: str, answer_id: str,
    last_event_id: str | None, after: int | None,
) -> EventStreamResponse:  # fmt: skip
    """An answer's SSE from the cursor on: live from the log, or what the store saved."""
    found = await find_answer(gw, who, session_id, answer_id)
    cursor = _cursor(gw, answer_id, last_event_id, after)
    if isinstance(found, StoredMessage):
        return _stored_sse(gw, answer_id, found, cursor)
    return _sse(gw, request, answer_id, cursor)


@router.get("/v1/sessions/{session_id}/stream", responses=SSE_DOC)
async def stream_session(
    session_id: SessionId, request: Request, gw: GatewayDep, who: SessionReader,
    last_event_id: LastEventId = None,
) -> EventStreamResponse:  # fmt: skip
    """The session's current answer, or (with `Last-Event-ID`) the rest of the one it names."""
    check_owner(gw, who, session_id)
    parsed = parse_event_id(last_event_id) if last_event_id else None
    if last_event_id and parsed is None:
        raise GatewayError(400, "Last-Event-ID must be '<answer_id>:<seq>'", param="Last-Event-ID")
    answer_id = parsed[0] if parsed else await gw.log.active(session_id)
    if answer_id is None:
        raise not_found("answer in progress")
    return await _answer_sse(gw, request, who, session_id, answer_id, last_event_id, 0)


@router.get("/v1/sessions/{session_id}/answers/{answer_id}/events", response_model=EventPage)
async def poll_events(
    session_id: SessionId, answer_id: AnswerId, gw: GatewayDep, who: SessionReader,
    after: Annotated[int, Query(ge=0, le=10**9)] = 0,
    wait: Annotated[float, Query(ge=0, le=3600)] = 0,
) -> EventPage:  # fmt: skip
    """Long polling: the events after `after`, waiting up to `wait` seconds for new ones."""
    found = await find_answer(gw, who, session_id, answer_id)
    if isinstance(found, StoredMessage):  # nothing will come: what was saved, and its end
        return event_page(answer_id, stored_entries(found, after), True, after)
    page = await gw.log.read(answer_id, after, wait=min(wait, gw.settings.max_wait_seconds))
    return event_page(answer_id, page.entries, page.finished, after)


@router.get("/v1/sessions/{session_id}/answers/{answer_id}", response_model=AnswerResult)
async def get_answer(
    session_id: SessionId, answer_id: AnswerId, gw: GatewayDep, who: SessionReader
) -> AnswerResult:
    """A finished answer's result (409 while it is still being generated)."""
    found = await find_answer(gw, who, session_id, answer_id)
    if isinstance(found, StoredMessage):
        return result_from(answer_id, session_id, stored_entries(found, 0)[-1])
    if not found.finished:
        raise GatewayError(409, "the answer is still being generated", "conflict_error",
                           code="answer_in_progress")  # fmt: skip
    return await answer_result(gw.log, answer_id, session_id)


@router.post(
    "/v1/sessions/{session_id}/answers/{answer_id}/tool_results", status_code=202,
    response_model=ToolResultAccepted,
)  # fmt: skip
async def post_tool_result(
    session_id: SessionId, answer_id: AnswerId, body: ToolResultCreate, gw: GatewayDep,
    who: Principal,
) -> ToolResultAccepted:  # fmt: skip
    """A client-side tool's result for an answer paused on its tool calls (its `tool_wait`
    event names them). Once every call has one, the same answer goes on; 409 when the
    answer is not waiting (or has this result already), 400 for a call it did not make."""
    answer_id, pending = await tool_result(
        gw, who, session_id, answer_id, body.tool_call_id, body.content
    )
    return ToolResultAccepted(
        answer_id=answer_id, tool_call_id=body.tool_call_id, pending=list(pending)
    )


async def _cancel(gw: Gateway, answer_id: str) -> dict[str, Any]:
    cancelled = await gw.runner.cancel(answer_id)
    return {"answer_id": answer_id, "cancelled": cancelled}


@router.delete("/v1/sessions/{session_id}/answers/{answer_id}")
async def cancel_answer(
    session_id: SessionId, answer_id: AnswerId, gw: GatewayDep, who: Principal
) -> dict[str, Any]:
    """Cancel an answer: its generation stops and so does its upstream request."""
    await answer_of(gw, who, session_id, answer_id)
    return await _cancel(gw, answer_id)


@router.post("/v1/sessions/{session_id}/cancel")
async def cancel_session(session_id: SessionId, gw: GatewayDep, who: Principal) -> dict[str, Any]:
    """Cancel the session's answer in progress, if any."""
    await owned_record(gw, who, session_id)
    active = await gw.log.active(session_id)
    if active is None:
        return {"answer_id": None, "cancelled": False}
    return await _cancel(gw, active)
