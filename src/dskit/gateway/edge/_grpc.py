"""The gateway over gRPC (`dskit serve --grpc-port N`, proto/dskit/v1/gateway.proto).

A `grpc.aio` server on the gateway's event loop, started and stopped with the app
(`serving`), using the same parts as the HTTP routes: the same keys (`caller_for`), rate
limits (`take_token`), turns (`start_turn`), stream log (`follow`) and cancels. So an
answer asked over gRPC is the same answer, with the same event ids, as over SSE, and
either surface can resume the other's.

    Ask(AskRequest) -> stream Event           one turn, or (with `after`) a resume
    Converse(stream ClientFrame) -> stream Event  messages, cancels, resumes, tool results

A `ToolResult` frame goes to the paused answer (`_turns.tool_result`, as the WebSocket's
and the HTTP route's do): taken, the stream gets an `accepted` event; refused, a
`rejected` one, and the stream goes on (other refused frames end it with their status).

Errors are statuses (`grpc_status`): the HTTP status the sessions API would give, mapped;
the error's type and code, and a rate limit's `retry-after`, are in trailing metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import orjson
import pydantic

from dskit.gateway._compose import Gateway
from dskit.gateway._errors import GatewayError, logged_error, not_found, validation_error
from dskit.gateway._pb import gateway_pb2 as pb
from dskit.gateway._pb import gateway_pb2_grpc as pb_grpc
from dskit.gateway._schemas import MessageCreate, SessionCreate
from dskit.gateway.access._matrix import Permission
from dskit.gateway.answers._codec import event_id, parse_event_id
from dskit.gateway.answers._turns import (
    answer_of,
    checked_result,
    new_session,
    not_waiting,
    start_turn,
    tool_result,
)
from dskit.gateway.backends._log import LogEntry
from dskit.gateway.edge._deps import forwards_sim_headers, take_token
from dskit.gateway.edge._guard import caller_for, check
from dskit.gateway.edge._views import follow

logger = logging.getLogger("dskit.gateway")
STOP_GRACE_SECONDS = 2.0
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED, 501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}  # fmt: skip


def grpc_status(error: GatewayError) -> Any:
    """The gRPC status code for an error's HTTP status (INTERNAL for the rest)."""
    return STATUS.get(error.status, grpc.StatusCode.INTERNAL)


def error_of(exc: BaseException, where: str) -> GatewayError:
    """The gateway error for any exception an RPC meets (a schema problem: 422)."""
    if isinstance(exc, pydantic.ValidationError):
        return validation_error(exc.errors())
    return logged_error(exc, where)


def trailers(error: GatewayError) -> tuple[tuple[str, str], ...]:
    """The error's type, code and (rate limits, outages) `retry-after` seconds."""
    pairs = [("error-type", error.type)]
    if error.code:
        pairs.append(("error-code", error.code))
    if error.retry_after is not None:
        pairs.append(("retry-after", error.headers()["Retry-After"]))
    return tuple(pairs)


async def abort(context: Any, exc: BaseException, where: str) -> NoReturn:
    """End the RPC with the status (and trailing metadata) of `exc`."""
    error = error_of(exc, where)
    message = error.body()["error"]["message"]  # redacted
    await context.abort(grpc_status(error), message, trailing_metadata=trailers(error))
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


def metadata_key(context: Any) -> str:
    """The bearer key of `authorization` metadata ("" without one)."""
    for name, value in context.invocation_metadata() or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, key = value.partition(" ")
            if scheme.lower() == "bearer":
                return key.strip()
    return ""


def sim_headers(gw: Gateway, context: Any) -> dict[str, str]:
    """`x-sim-*` metadata, sent upstream as the same headers are over HTTP."""
    if not forwards_sim_headers(gw):
        return {}
    pairs = context.invocation_metadata() or ()
    return {k: v for k, v in pairs if k.startswith("x-sim-") and isinstance(v, str)}


def usage_of(data: Any) -> pb.Usage | None:
    if not isinstance(data, dict):
        return None
    details = data.get("completion_tokens_details") or {}
    names = ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_cache_hit_tokens",
             "prompt_cache_miss_tokens")  # fmt: skip
    counts = {name: int(data.get(name) or 0) for name in names}
    return pb.Usage(**counts, reasoning_tokens=int(details.get("reasoning_tokens") or 0))


def error_message(data: dict[str, Any]) -> pb.Error:
    return pb.Error(
        type=str(data.get("type") or ""), message=str(data.get("message") or ""),
        code=str(data.get("code") or ""), status=int(data.get("status") or 0),
    )  # fmt: skip


def tool_wait_of(data: dict[str, Any]) -> pb.ToolWait:
    """`tool_wait`'s whole calls (API form) as `ToolCall`s, numbered in order."""
    calls = [
        pb.ToolCall(index=n, id=str(call.get("id") or ""),
                    name=str((call.get("function") or {}).get("name") or ""),
                    arguments=str((call.get("function") or {}).get("arguments") or ""))
        for n, call in enumerate(data.get("tool_calls") or [])
    ]  # fmt: skip
    return pb.ToolWait(tool_calls=calls, timeout_seconds=float(data.get("timeout_seconds") or 0))


def payload_of(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The `Event` oneof field for a logged event (its JSON payload as the SSE data)."""
    if kind in ("content", "reasoning"):
        return {kind: str(data.get("text") or "")}
    if kind == "tool_call":
        return {"tool_call": pb.ToolCall(
            index=int(data.get("index") or 0), id=str(data.get("id") or ""),
            name=str(data.get("name") or ""), arguments=str(data.get("arguments") or ""),
        )}  # fmt: skip
    if kind == "tool_wait":
        return {"tool_wait": tool_wait_of(data)}
    if kind == "usage":
        return {"usage": usage_of(data)}
    if kind == "done":
        done = pb.Done(finish_reason=str(data.get("finish_reason") or ""))
        usage = usage_of(data.get("usage"))
        if usage is not None:
            done.usage.CopyFrom(usage)
        return {"done": done}
    if kind == "error":
        return {"error": error_message(data)}
    return {}


def event_of(session_id: str, answer_id: str, entry: LogEntry) -> pb.Event:
    """A logged event as an `Event`: the SSE frame's id, type and data."""
    return pb.Event(
        id=event_id(answer_id, entry.seq), session_id=session_id, answer_id=answer_id,
        **payload_of(entry.kind, orjson.loads(entry.data)),
    )  # fmt: skip


def session_body(
    model: str, system: str | None, title: str | None, params: pb.Parameters
) -> SessionCreate:
    """A new session's fields, validated by the HTTP API's schema."""
    fields = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty",
              "thinking", "effort")  # fmt: skip
    parameters: dict[str, Any] = {f: getattr(params, f) for f in fields if params.HasField(f)}
    if params.stop:
        parameters["stop"] = list(params.stop)
    body: dict[str, Any] = {"system": system, "title": title, "parameters": parameters}
    return SessionCreate.model_validate({**body, **({"model": model} if model else {})})


# what a caller's streams end with: its gateway key (revoked), its token's end (expired)
Credential = tuple[str | None, float | None]


class GatewayService:
    """The `dskit.v1.Gateway` service on one gateway's parts."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def caller(self, credential: str) -> tuple[str, Credential]:
        """The principal of the call's key or token, which must grant `sessions`, and what
        its streams end with: the gateway key (revoked) or the token's end (expired)."""
        found = await caller_for(self.gw, credential)
        check(found, Permission.SESSIONS)
        return found.principal, (credential if found.by_key else None, found.valid_until)

    async def Ask(self, request: pb.AskRequest, context: Any) -> AsyncIterator[pb.Event]:
        """One turn's answer, or with `after` the rest of an answer, as events."""
        try:
            who, credential = await self.caller(metadata_key(context))
            if request.HasField("after"):
                if request.content:
                    raise GatewayError(400, "a resume (after) sends no content", param="content")
                where = await self.resume(who, request.after, request.session_id or None)
            else:
                where = await self.ask(who, request, sim_headers(self.gw, context))
            async for event in self.events(*where, credential):
                yield event
        except Exception as exc:
            await abort(context, exc, "grpc Ask")

    async def ask(
        self, who: str, request: pb.AskRequest, headers: dict[str, str]
    ) -> tuple[str, str, int]:
        """Send the turn (to a new session without `session_id`); where to read from."""
        if request.HasField("session_id"):
            session_id = request.session_id
        else:
            body = session_body(
                request.model, request.system if request.HasField("system") else None,
                request.title if request.HasField("title") else None, request.parameters,
            )  # fmt: skip
            session_id = await self.create(who, body)
        return session_id, await self.turn(who, session_id, request.content, headers), 0

    async def create(self, who: str, body: SessionCreate) -> str:
        await take_token(self.gw, who)
        return (await new_session(self.gw, who, body)).id

    async def turn(self, who: str, session_id: str, content: str, headers: dict[str, str]) -> str:
        """Start an answer to `content` (validated as over HTTP); its id."""
        message = MessageCreate.model_validate({"content": content})
        await take_token(self.gw, who)
        return await start_turn(self.gw, who, session_id, message.content, headers)

    async def resume(self, who: str, after: str, session_id: str | None) -> tuple[str, str, int]:
        """Where the events after event id `after` are (404 unless `who` may read them)."""
        parsed = parse_event_id(after)
        if parsed is None:
            raise GatewayError(400, "after must be '<answer_id>:<seq>'", param="after")
        answer_id, seq = parsed
        if session_id is None:
            info = await self.gw.log.info(answer_id)
            session_id = info.session_id if info else ""
        await answer_of(self.gw, who, session_id, answer_id)
        self.gw.metrics.client_resumes.inc()
        return session_id, answer_id, seq

    async def events(
        self, session_id: str, answer_id: str, after: int, credential: Credential
    ) -> AsyncIterator[pb.Event]:
        """The answer's events after `after`, live, until it ends; a 401 once the
        credential ends (`CredentialWatch`: a revoked key, an expired token)."""
        gw = self.gw
        wait = min(gw.settings.key_check_seconds, gw.settings.heartbeat_seconds)
        gw.metrics.active_streams.inc()
        try:
            with gw.watch.watching(*credential, cancel=False) as watched:
                async for entries in follow(gw.log, answer_id, after, wait):
                    if watched is not None and watched.ended is not None:
                        raise watched.ended
                    for entry in entries:
                        yield event_of(session_id, answer_id, entry)
        finally:
            gw.metrics.active_streams.dec()

    async def Converse(
        self, frames: AsyncIterator[pb.ClientFrame], context: Any
    ) -> AsyncIterator[pb.Event]:
        """Frames in, the events of the answers they start or resume out."""
        try:
            who, credential = await self.caller(metadata_key(context))
        except Exception as exc:
            await abort(context, exc, "grpc Converse")
        conversation = Conversation(self, who, credential, sim_headers(self.gw, context))
        try:
            async for event in conversation.run(frames):
                yield event
        except Exception as exc:
            await abort(context, exc, "grpc Converse")


class Conversation:
    """One Converse stream: a reader of the client's frames, a follower per answer, and
    one queue of what to send. A refused frame ends the stream with its status."""

    def __init__(
        self, service: GatewayService, who: str, credential: Credential,
        headers: dict[str, str],
    ) -> None:  # fmt: skip
        self.service = service
        self.who = who
        self.credential = credential
        self.headers = headers
        self.session_id: str | None = None
        self.out: asyncio.Queue[pb.Event | Exception | None] = asyncio.Queue()
        self.followers: dict[str, asyncio.Task[None]] = {}

    async def run(self, frames: AsyncIterator[pb.ClientFrame]) -> AsyncIterator[pb.Event]:
        reader = asyncio.create_task(self.read(frames))
        try:
            while (item := await self.out.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            tasks = [reader, *self.followers.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def read(self, frames: AsyncIterator[pb.ClientFrame]) -> None:
        """Handle each frame; once the client is done, wait for the answers followed."""
        try:
            async for frame in frames:
                await self.handle(frame)
            await asyncio.gather(*self.followers.values(), return_exceptions=True)
        except Exception as exc:
            await self.out.put(exc)
        else:
            await self.out.put(None)

    async def handle(self, frame: pb.ClientFrame) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "message":
            await self.message(frame.message)
        elif kind == "cancel":
            await self.cancel()
        elif kind == "resume":
            self.follow(*await self.service.resume(self.who, frame.resume.after, None))
        elif kind == "tool_result":
            await self.tool_result(frame.tool_result)
        else:
            raise GatewayError(
                400, "a frame needs one of message, cancel, resume, tool_result", param="frame"
            )

    async def message(self, message: pb.ClientFrame.Message) -> None:
        """A turn in the message's session, else the conversation's, else a new one."""
        session_id = message.session_id if message.HasField("session_id") else self.session_id
        if session_id is None:
            system = message.system if message.HasField("system") else None
            body = session_body(message.model, system, None, message.parameters)
            session_id = await self.service.create(self.who, body)
        answer_id = await self.service.turn(self.who, session_id, message.content, self.headers)
        self.follow(session_id, answer_id, 0)

    async def cancel(self) -> None:
        """Cancel the conversation's session's answer in progress (none: nothing to do)."""
        gw = self.service.gw
        active = await gw.log.active(self.session_id) if self.session_id else None
        if active is not None:
            await gw.runner.cancel(active)

    async def tool_result(self, frame: pb.ClientFrame.ToolResult) -> None:
        """Hand the result to its paused answer: an `accepted` event, or a `rejected` one
        (the stream goes on either way)."""
        answer_id = frame.answer_id if frame.HasField("answer_id") else None
        session_id = self.session_id or ""
        try:
            result = checked_result(frame.tool_call_id, frame.content)
            session_id = await self.session_of(answer_id)
            answer_id, pending = await tool_result(
                self.service.gw, self.who, session_id, answer_id, result.tool_call_id,
                result.content,
            )  # fmt: skip
        except GatewayError as error:
            body = {**error.body()["error"], "status": error.status}
            rejected = pb.Event(
                session_id=session_id, answer_id=answer_id or "", rejected=error_message(body)
            )
            await self.out.put(rejected)
            return
        accepted = pb.ToolResultAccepted(tool_call_id=frame.tool_call_id, pending=pending)
        await self.out.put(pb.Event(session_id=session_id, answer_id=answer_id, accepted=accepted))

    async def session_of(self, answer_id: str | None) -> str:
        """The session a tool result is for: the answer's (as the log knows it), else the
        conversation's (none yet: no answer waits)."""
        if answer_id is not None:
            info = await self.service.gw.log.info(answer_id) if answer_id else None
            if info is None:
                raise not_found("answer")
            return info.session_id
        if self.session_id is None:
            raise not_waiting("no answer of this conversation is waiting for tool results")
        return self.session_id

    def follow(self, session_id: str, answer_id: str, after: int) -> None:
        """Send the answer's events after `after` (instead of any earlier follower's)."""
        self.session_id = session_id
        previous = self.followers.pop(answer_id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self.relay(session_id, answer_id, after))
        self.followers[answer_id] = task

    async def relay(self, session_id: str, answer_id: str, after: int) -> None:
        try:
            async for event in self.service.events(session_id, answer_id, after, self.credential):
                await self.out.put(event)
        except Exception as exc:
            await self.out.put(exc)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def serving(gw: Gateway) -> AsyncIterator[Any]:
    """The gRPC server on `settings.host` and `settings.grpc_port` while the block runs."""
    server = grpc.aio.server()
    pb_grpc.add_GatewayServicer_to_server(GatewayService(gw), server)  # type: ignore[no-untyped-call]
    where = address(gw.settings.host, gw.settings.grpc_port)
    server.add_insecure_port(where)
    await server.start()
    logger.info("gRPC: %s (dskit.v1.Gateway)", where)
    try:
        yield server
    finally:
        await server.stop(STOP_GRACE_SECONDS)
