"""Two-way streaming: one WebSocket per session, `/v1/sessions/{id}/ws`.

Auth is the HTTP routes': a bearer header, or the web page's login cookie from the
gateway's own origin (the edge checks `Origin`; browsers cannot set headers on a
WebSocket). A refused handshake is answered with the HTTP error (401, 403, 404).

Client frames (JSON text):

    {"type": "message", "content": "..."}         a user turn; its answer streams here
    {"type": "cancel"}                            cancel the session's answer in progress
    {"type": "resume", "after": "<answer_id>:<seq>"}   stream that answer after that event
    {"type": "resume"}                            the answer in progress, from its start
    {"type": "ack", "id": "<answer_id>:<seq>"}    events up to this one were consumed
    {"type": "tool_result", "tool_call_id": "...", "content": "..."}   (client-side tools;
                                  `answer_id` optional: the session's answer in progress)

Server frames: the answer's numbered events, as the SSE stream has them, `{"id", "event",
"data"}` (a coalesced one adds `from`, see `_flow.py`), and control frames with a `type`:
`answer` (an answer began: `answer_id`), `cancelled` (`answer_id`, `cancelled`),
`tool_result_accepted` (`answer_id`, `tool_call_id`, `pending`: the calls still without
a result), `error` (`error`: the gateway's error object with `status`; the connection
stays usable). A frame that is not text is answered with an error and a 1003 close.

Client-side tools: the session's `tools` are run by its client. An answer that calls
them pauses: after its `tool_call` events it logs `tool_wait` (the whole calls and the
timeout) and waits. Each `tool_result` goes to it (on whichever instance runs it); once
every call has its result they are stored as tool turns and the same answer goes on, its
events continuing on this connection with the next seqs. A result nobody waits for (no
paused answer, an unknown call id, a second result for a call) is one `error` frame,
and nothing is stored. See `_lifecycle.py` for the pause and its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from starlette.types import Message

from dskit.gateway._compose import Gateway
from dskit.gateway._errors import GatewayError, logged_error, not_found
from dskit.gateway._schemas import MAX_CONTENT
from dskit.gateway.access._owners import check_owner
from dskit.gateway.answers._codec import parse_event_id
from dskit.gateway.answers._turns import checked_result, start_turn, tool_result
from dskit.gateway.backends._log import UnknownAnswerError
from dskit.gateway.edge._deps import ID_PATTERN, caller_of, take_token, upstream_headers
from dskit.gateway.edge._flow import AckWindow, ws_frame
from dskit.gateway.edge._headers import deny
from dskit.gateway.edge._keywatch import SCOPE_KEY

router = APIRouter(tags=["sessions"])
ID = re.compile(ID_PATTERN)


def bad_frame(message: str, code: str = "bad_frame") -> GatewayError:
    return GatewayError(400, message, code=code)


@router.websocket("/v1/sessions/{session_id}/ws")
async def session_socket(websocket: WebSocket, session_id: str) -> None:
    """The session's answers, both ways (see the module docstring for the frames)."""
    gw: Gateway = websocket.app.state.gateway
    try:
        if not ID.match(session_id):
            raise not_found()
        # the caller (found by the guard) and upstream_headers read only the scope
        caller = caller_of(websocket)
        who = caller.principal
        check_owner(gw, who, session_id)
    except GatewayError as error:
        await deny(websocket.scope, websocket.send, error)
        return
    await websocket.accept()
    connection = Connection(gw, websocket, who, session_id)
    credential = websocket.scope.get(SCOPE_KEY), caller.valid_until
    with gw.watch.watching(*credential) as watched:  # a revoked key, an expired token
        try:
            await connection.run(upstream_headers(cast(Request, websocket), gw))
        except asyncio.CancelledError:
            if watched is None or watched.ended is None:
                raise
            watched.task.uncancel()
            await connection.ended(watched.ended)


class Connection:
    """One WebSocket: a reader of client frames and at most one follower of an answer."""

    def __init__(self, gw: Gateway, websocket: WebSocket, who: str, session_id: str) -> None:
        self.gw = gw
        self.ws = websocket
        self.who = who
        self.session_id = session_id
        self.flow = AckWindow()
        self.answer_id: str | None = None
        self.follower: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def run(self, headers: dict[str, str]) -> None:
        self.headers = headers
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if not await self.frame(message):
                    return
        except WebSocketDisconnect:
            return
        finally:
            await self.unfollow()

    async def frame(self, message: Message) -> bool:
        """Handle one client frame; False when the connection is to close."""
        text = message.get("text")
        if text is None:
            await self.error(bad_frame("frames must be JSON text"))
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await self.ws.close(1003, "frames must be JSON text")
            return False
        try:
            await self.handle(_parse(text))
        except GatewayError as error:
            await self.error(error)
        except Exception as exc:  # never a crash: the client hears it, the log has it
            await self.error(logged_error(exc, f"websocket {self.session_id}"))
        return True

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ack":
            seq = self._seq(frame.get("id"), "id")
            if seq is not None and self.gw.settings.adaptive_flow:
                self.flow.ack(seq)
        elif kind == "message":
            await self.message(frame)
        elif kind == "resume":
            await self.resume(frame)
        elif kind == "cancel":
            await self.cancel()
        elif kind == "tool_result":
            await self.tool_result(frame)
        else:
            raise bad_frame(
                "frame type must be one of message, cancel, resume, ack, tool_result",
                code="unknown_frame_type",
            )

    def _seq(self, value: Any, name: str) -> int | None:
        """The seq of an event id of the answer followed (None: another answer's)."""
        parsed = parse_event_id(value) if isinstance(value, str) else None
        if parsed is None:
            raise GatewayError(400, f"'{name}' must be '<answer_id>:<seq>'", param=name)
        return parsed[1] if parsed[0] == self.answer_id else None

    async def message(self, frame: dict[str, Any]) -> None:
        content = frame.get("content")
        if not isinstance(content, str) or not 0 < len(content) <= MAX_CONTENT:
            raise GatewayError(
                400, f"'content' must be a string of 1 to {MAX_CONTENT} characters",
                param="content",
            )  # fmt: skip
        await take_token(self.gw, self.who)
        answer_id = await start_turn(self.gw, self.who, self.session_id, content, self.headers)
        await self.began(answer_id)

    async def began(self, answer_id: str) -> None:
        await self.send({"type": "answer", "answer_id": answer_id})
        await self.follow(answer_id, 0)

    async def resume(self, frame: dict[str, Any]) -> None:
        after = frame.get("after")
        if after is None:
            active = await self.gw.log.active(self.session_id)
            if active is None:
                raise not_found("answer in progress")
            await self.follow(active, 0)
            return
        parsed = parse_event_id(after) if isinstance(after, str) else None
        if parsed is None:
            raise GatewayError(400, "'after' must be '<answer_id>:<seq>'", param="after")
        info = await self.gw.log.info(parsed[0])
        if info is None or info.session_id != self.session_id:
            raise not_found("answer")
        self.gw.metrics.client_resumes.inc()
        await self.follow(*parsed)

    async def cancel(self) -> None:
        active = await self.gw.log.active(self.session_id)
        cancelled = bool(active) and await self.gw.runner.cancel(active or "")
        await self.send({"type": "cancelled", "answer_id": active, "cancelled": cancelled})

    async def tool_result(self, frame: dict[str, Any]) -> None:
        result = checked_result(frame.get("tool_call_id"), frame.get("content"))
        answer_id = frame.get("answer_id")
        if answer_id is not None and not (isinstance(answer_id, str) and ID.match(answer_id)):
            raise GatewayError(400, "'answer_id' must be an answer id", param="answer_id")
        answer_id, pending = await tool_result(
            self.gw, self.who, self.session_id, answer_id, result.tool_call_id, result.content
        )
        call_id = result.tool_call_id
        await self.send({"type": "tool_result_accepted", "answer_id": answer_id,
                         "tool_call_id": call_id, "pending": list(pending)})  # fmt: skip

    # ---- the follower ----------------------------------------------------------------

    async def follow(self, answer_id: str, after: int) -> None:
        await self.unfollow()
        self.answer_id = answer_id
        self.flow.reset()
        self.follower = asyncio.create_task(self._follow(answer_id, after))

    async def unfollow(self) -> None:
        task, self.follower = self.follower, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, answer_id: str, after: int) -> None:
        log, wait = self.gw.log, self.gw.settings.heartbeat_seconds
        try:
            while True:
                page = await log.read(answer_id, after, wait=wait)
                if page.entries:
                    after = page.entries[-1].seq
                    for span in self.flow.spans(page.entries):
                        await self.send_text(ws_frame(answer_id, span))
                        self.flow.sent(span.entry.seq)
                    await self.flow.room()
                elif page.finished:
                    return
        except UnknownAnswerError:
            await self.error(not_found("answer"))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the client left; the answer runs on

    async def ended(self, error: GatewayError) -> None:
        """The connection's credential ended (a revoked key, an expired token)."""
        await self.error(error)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.ws.close(1008, error.code or "credential ended")

    # ---- sending -----------------------------------------------------------------------

    async def error(self, error: GatewayError) -> None:
        body = {**error.body()["error"], "status": error.status}
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await self.send({"type": "error", "error": body})

    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_text(orjson.dumps(frame).decode())

    async def send_text(self, text: str) -> None:
        async with self.lock:
            await self.ws.send_text(text)


def _parse(text: str) -> dict[str, Any]:
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise bad_frame("a frame must be a JSON object") from None
    if not isinstance(frame, dict):
        raise bad_frame("a frame must be a JSON object")
    return frame
