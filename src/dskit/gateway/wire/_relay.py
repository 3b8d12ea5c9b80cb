"""The OpenAI-compatible relay: `POST /v1/chat/completions` through `AsyncDeepSeek`.

Retries and resume come from the client; this module only turns what it reads back into
the wire format. What it sends is the shape every common client parses: `data: {json}` +
a blank line (LF only), no `event:` or `id:` fields, `data: [DONE]` at the end, and
`: keep-alive` comments while the upstream queues (the official `openai` package skips
them, as DeepSeek's own server sends them). Reads of plain text chunks already in that
shape pass on as the upstream sent them (`AsyncStream.wire()`: digested first, so a
resume still knows what was sent); the rest is encoded by hand with orjson, from byte
prefixes built once per stream under the upstream's id, model and time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Send

from dskit._validate import USER_ID
from dskit.client._core import API_PARAMS
from dskit.client._types import ChatResult, StreamEvent, Usage
from dskit.gateway._errors import GatewayError, logged_error
from dskit.gateway._metrics import Metrics
from dskit.gateway._schemas import ChatCompletionRequest
from dskit.gateway.edge._response import body_message

if TYPE_CHECKING:
    from dskit.gateway.answers._sources import UpstreamSource

KEEP_ALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
LOCAL_FIELDS = ("stream", "stream_options", "user")


def client_params(request: ChatCompletionRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages and `AsyncDeepSeek.stream` keyword arguments for an OpenAI-style request."""
    data = request.model_dump(exclude_none=True)
    messages: list[dict[str, Any]] = data.pop("messages")
    for name in LOCAL_FIELDS:
        data.pop(name, None)
    params: dict[str, Any] = {"model": data.pop("model")}
    _max_tokens(data)
    params.update({name: data.pop(name) for name in API_PARAMS if name in data})
    if request.user and USER_ID.match(request.user) and "user_id" not in params:
        params["user_id"] = request.user
    if data:
        params["extra_body"] = data
    check_encodable(messages, params)
    return messages, params


def _max_tokens(data: dict[str, Any]) -> None:
    """`max_completion_tokens` (OpenAI's newer name) becomes DeepSeek's `max_tokens`."""
    newer = data.pop("max_completion_tokens", None)
    if newer is None:
        return
    if data.get("max_tokens", newer) != newer:
        raise GatewayError(
            400, f"max_tokens ({data['max_tokens']}) and max_completion_tokens ({newer}) "
            "differ; send one of them", param="max_completion_tokens", code="invalid_parameter",
        )  # fmt: skip
    data["max_tokens"] = newer


def check_encodable(messages: list[dict[str, Any]], params: dict[str, Any]) -> None:
    """JSON the upstream can take: orjson refuses integers beyond 64 bits (a clear 400)."""
    try:
        orjson.dumps([messages, params])
    except TypeError as exc:
        raise GatewayError(400, f"Invalid request body: {exc}", code="invalid_json") from None


def completion_id(upstream_id: str) -> str:
    """A completion's id: the upstream's (chunks passed on carry it), else one of ours."""
    return upstream_id or f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(result: ChatResult, model: str) -> dict[str, Any]:
    """A non-streamed `chat.completion` object."""
    message = result.to_message()
    if not result.tool_calls:
        message.pop("tool_calls", None)
    return {
        "id": completion_id(result.id),
        "object": "chat.completion",
        "created": result.created or int(time.time()),
        "model": result.model or model,
        "system_fingerprint": result.system_fingerprint,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": result.logprobs,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": result.usage.to_dict() if result.usage else None,
    }


class ChunkEncoder:
    """`chat.completion.chunk` events from byte templates built once per stream."""

    def __init__(
        self, model: str, upstream_id: str = "", created: int = 0, fingerprint: str | None = None
    ) -> None:
        self.id = completion_id(upstream_id)
        head = orjson.dumps(
            {"id": self.id, "object": "chat.completion.chunk",
             "created": created or int(time.time()), "model": model,
             "system_fingerprint": fingerprint}
        )[:-1]  # fmt: skip
        self._head = b"data: " + head
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'
        self._suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'
        # a content delta is the hot path: its text is the only part that varies
        self._content_open = self._prefix + b'{"content":'
        self._content_close = b"}" + self._suffix
        self.role_sent = False

    @classmethod
    def answering(cls, result: ChatResult, model: str) -> ChunkEncoder:
        """Under the upstream's id, model, time and fingerprint, as far as `result` (the
        answer so far) knows them: chunks passed on as they came carry the same."""
        return cls(result.model or model, result.id, result.created, result.system_fingerprint)

    def delta(self, delta: Mapping[str, Any]) -> bytes:
        if not self.role_sent:
            self.role_sent = True
            delta = {"role": "assistant", **delta}
        return self._prefix + orjson.dumps(delta) + self._suffix

    def content(self, text: str) -> bytes:
        if not self.role_sent:
            return self.delta({"content": text})
        return self._content_open + orjson.dumps(text) + self._content_close

    def scored(self, text: str, logprobs: Mapping[str, Any]) -> bytes:
        """A content delta with the upstream's `logprobs` for it."""
        delta = {"content": text} if self.role_sent else {"role": "assistant", "content": text}
        self.role_sent = True
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}
        return self._head + b"," + orjson.dumps({"choices": [choice]})[1:] + b"\n\n"

    def finish(self, reason: str | None, usage: Usage | None) -> bytes:
        delta = {"content": ""} if self.role_sent else {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        tail = {"choices": [choice], "usage": usage.to_dict() if usage else None}
        return self._head + b"," + orjson.dumps(tail)[1:] + b"\n\n"


def encode_event(encoder: ChunkEncoder, event: StreamEvent) -> bytes | None:
    """The wire bytes for one delta event (None: not a delta)."""
    kind = event.type
    if kind == "content":
        if event.logprobs is not None:  # type: ignore[union-attr]
            return encoder.scored(event.text, event.logprobs)  # type: ignore[union-attr]
        return encoder.content(event.text)  # type: ignore[union-attr]
    if kind == "reasoning":
        return encoder.delta({"content": None, "reasoning_content": event.text})  # type: ignore[union-attr]
    if kind == "tool_call":
        return encoder.delta({"tool_calls": [_tool_fragment(event)]})
    return None


def _tool_fragment(event: Any) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": event.index}
    function: dict[str, Any] = {"arguments": event.arguments}
    if event.id:
        fragment["id"], fragment["type"] = event.id, "function"
    if event.name:
        function["name"] = event.name
    fragment["function"] = function
    return fragment


class Relay:
    """One streamed completion: pulls the upstream's reads, writes wire bytes, records
    metrics.

    The body starts with `source.first`, the event the upstream pool already read (so a
    failure before any output was a proper HTTP error), then reads `source.stream.wire()`
    itself, telling the source how the answer ended. A read of plain text chunks goes
    out as the upstream sent it; everything else (the first event, keep-alives, a
    resumed answer, the end with usage and `[DONE]`) is encoded here, under the id,
    model and time of the upstream's first chunk, so the client sees one completion.
    `on_done` gets the answer once it has been sent whole.
    """

    def __init__(
        self, source: UpstreamSource, model: str, metrics: Metrics, started: float,
        on_done: Callable[[ChatResult], Awaitable[None]] | None = None,
    ) -> None:  # fmt: skip
        self.source = source
        self.stream = source.stream
        self.items = source.stream.wire()
        self.on_done = on_done
        self.first = source.first
        self.model = model
        self._encoder: ChunkEncoder | None = None
        self.metrics = metrics
        self.started = started
        self.ttft_seen = False

    @property
    def encoder(self) -> ChunkEncoder:
        """Made for the first chunk the relay writes itself, when the upstream's first
        chunk has been read (keep-alives need none)."""
        if self._encoder is None:
            self._encoder = ChunkEncoder.answering(self.stream.snapshot(), self.model)
        return self._encoder

    async def write(self, send: Send) -> None:
        """Write the wire bytes through `send` (a producer for `EventStreamResponse`):
        what arrived in one network read goes out as one piece."""
        metrics, stream, items = self.metrics, self.stream, self.items
        metrics.active_streams.inc()
        out: list[bytes] = []
        try:
            item: StreamEvent | bytes | None = self.first
            while item is not None:
                if isinstance(item, bytes):
                    self._pass_on(item, out)
                elif self._relay(item, out):
                    await send(body_message(b"".join(out)))
                    self.source.ended(None)
                    if self.on_done is not None:
                        await self.on_done(stream.snapshot())
                    return
                if out and not stream.ready:
                    await send(body_message(b"".join(out)))  # one piece: joined, it is itself
                    out.clear()
                item = await anext(items, None)
        except Exception as exc:  # after the headers: the error travels as an event
            self.source.ended(exc)
            error = logged_error(exc, "a relayed stream")
            metrics.errors.labels(error.kind).inc()
            out.append(b"data: " + error.encode() + b"\n\n")
            await send(body_message(b"".join(out)))
        finally:
            metrics.active_streams.dec()
            await stream.aclose()

    def _pass_on(self, data: bytes, out: list[bytes]) -> None:
        """A read of plain text chunks, as the upstream sent it."""
        self.encoder.role_sent = True  # the upstream's own chunks went out: no role after
        if not self.ttft_seen and self.stream.delivered:
            self._first_token()
        out.append(data)

    def _relay(self, event: StreamEvent, out: list[bytes]) -> bool:
        """Add one event's bytes to `out`; True at the end of the answer."""
        kind = event.type
        if kind in ("keep_alive", "retrying"):
            out.append(KEEP_ALIVE)
            if kind == "retrying":
                self.metrics.retries.inc()
            return False
        if kind == "done":
            out += (self._finish(event.result), DONE)  # type: ignore[union-attr]
            return True
        if not self.ttft_seen and kind in ("content", "reasoning", "tool_call"):
            self._first_token()
        data = encode_event(self.encoder, event)
        if data is not None:
            out.append(data)
        elif kind == "resumed":
            self.metrics.resumes.inc()
        return False

    def _first_token(self) -> None:
        self.ttft_seen = True
        self.metrics.ttft.labels("chat_completions").observe(time.monotonic() - self.started)

    def _finish(self, result: ChatResult) -> bytes:
        self.metrics.count_usage(result.usage)
        self.metrics.latency.labels("chat_completions").observe(time.monotonic() - self.started)
        return self.encoder.finish(result.finish_reason, result.usage)
