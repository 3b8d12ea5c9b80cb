"""The OpenAI-compatible relay: `POST /v1/chat/completions` through `AsyncDeepSeek`.

Retries and resume come from the client; this module only turns its typed events back
into the wire format. What it sends is the shape every common client parses: `data:
{json}` + a blank line (LF only), no `event:` or `id:` fields, `data: [DONE]` at the end,
and `: keep-alive` comments while the upstream queues (the official `openai` package
skips them, as DeepSeek's own server sends them). Chunks are encoded by hand with
orjson, from byte prefixes built once per request: the relay's per-chunk work is one
dumps of the delta and a concatenation.
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
from dskit.gateway._response import body_message
from dskit.gateway._schemas import ChatCompletionRequest

if TYPE_CHECKING:
    from dskit.gateway._scale import UpstreamSource

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
    params.update({name: data.pop(name) for name in API_PARAMS if name in data})
    if request.user and USER_ID.match(request.user) and "user_id" not in params:
        params["user_id"] = request.user
    if data:
        params["extra_body"] = data
    check_encodable(messages, params)
    return messages, params


def check_encodable(messages: list[dict[str, Any]], params: dict[str, Any]) -> None:
    """JSON the upstream can take: orjson refuses integers beyond 64 bits (a clear 400)."""
    try:
        orjson.dumps([messages, params])
    except TypeError as exc:
        raise GatewayError(400, f"Invalid request body: {exc}", code="invalid_json") from None


def completion_body(result: ChatResult, completion_id: str, model: str) -> dict[str, Any]:
    """A non-streamed `chat.completion` object."""
    message = result.to_message()
    if not result.tool_calls:
        message.pop("tool_calls", None)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": result.created or int(time.time()),
        "model": result.model or model,
        "system_fingerprint": result.system_fingerprint,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": result.usage.to_dict() if result.usage else None,
    }


class ChunkEncoder:
    """`chat.completion.chunk` events from byte templates built once per stream."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        head = orjson.dumps(
            {"id": self.id, "object": "chat.completion.chunk", "created": int(time.time()),
             "model": model}
        )[:-1]  # fmt: skip
        self._head = b"data: " + head
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'
        self._suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'
        # a content delta is the hot path: its text is the only part that varies
        self._content_open = self._prefix + b'{"content":'
        self._content_close = b"}" + self._suffix
        self.role_sent = False

    def delta(self, delta: Mapping[str, Any]) -> bytes:
        if not self.role_sent:
            self.role_sent = True
            delta = {"role": "assistant", **delta}
        return self._prefix + orjson.dumps(delta) + self._suffix

    def content(self, text: str) -> bytes:
        if not self.role_sent:
            return self.delta({"content": text})
        return self._content_open + orjson.dumps(text) + self._content_close

    def finish(self, reason: str | None, usage: Usage | None) -> bytes:
        delta = {"content": ""} if self.role_sent else {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        tail = {"choices": [choice], "usage": usage.to_dict() if usage else None}
        return self._head + b"," + orjson.dumps(tail)[1:] + b"\n\n"


def encode_event(encoder: ChunkEncoder, event: StreamEvent) -> bytes | None:
    """The wire bytes for one client event (None: nothing to send)."""
    kind = event.type
    if kind == "content":
        return encoder.content(event.text)  # type: ignore[union-attr]
    if kind == "reasoning":
        return encoder.delta({"content": None, "reasoning_content": event.text})  # type: ignore[union-attr]
    if kind == "tool_call":
        return encoder.delta({"tool_calls": [_tool_fragment(event)]})
    if kind in ("keep_alive", "retrying"):
        return KEEP_ALIVE
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
    """One streamed completion: pulls client events, writes wire bytes, records metrics.

    The body starts with `source.first`, the event the upstream pool already read (so a
    failure before any output was a proper HTTP error), then reads `source.stream`
    itself (one frame less per event than `source.events()`), telling the source how the
    answer ended. `on_done` gets the answer once it has been sent whole.
    """

    def __init__(
        self, source: UpstreamSource, model: str, metrics: Metrics, started: float,
        on_done: Callable[[ChatResult], Awaitable[None]] | None = None,
    ) -> None:  # fmt: skip
        self.source = source
        self.stream = source.stream
        self.on_done = on_done
        self.first = source.first
        self.encoder = ChunkEncoder(model)
        self.metrics = metrics
        self.started = started
        self.ttft_seen = False

    async def write(self, send: Send) -> None:
        """Write the wire bytes through `send` (a producer for `EventStreamResponse`):
        what arrived in one network read goes out as one piece."""
        metrics, stream = self.metrics, self.stream
        metrics.active_streams.inc()
        out: list[bytes] = []
        try:
            event = self.first
            while event is not None:
                if self._relay(event, out):
                    await send(body_message(b"".join(out)))
                    self.source.ended(None)
                    if self.on_done is not None:
                        await self.on_done(stream.snapshot())
                    return
                if out and not stream.ready:
                    await send(body_message(b"".join(out)))  # one piece: joined, it is itself
                    out.clear()
                event = await anext(stream, None)
        except Exception as exc:  # after the headers: the error travels as an event
            self.source.ended(exc)
            error = logged_error(exc, "a relayed stream")
            metrics.errors.labels(error.kind).inc()
            out.append(b"data: " + error.encode() + b"\n\n")
            await send(body_message(b"".join(out)))
        finally:
            metrics.active_streams.dec()
            await stream.aclose()

    def _relay(self, event: StreamEvent, out: list[bytes]) -> bool:
        """Add one event's bytes to `out`; True at the end of the answer."""
        kind = event.type
        if not self.ttft_seen and kind in ("content", "reasoning", "tool_call"):
            self.ttft_seen = True
            self.metrics.ttft.labels("chat_completions").observe(time.monotonic() - self.started)
        if kind == "done":
            out += (self._finish(event.result), DONE)  # type: ignore[union-attr]
            return True
        data = encode_event(self.encoder, event)
        if data is not None:
            out.append(data)
        elif kind == "resumed":
            self.metrics.resumes.inc()
        if kind == "retrying":
            self.metrics.retries.inc()
        return False

    def _finish(self, result: ChatResult) -> bytes:
        self.metrics.count_usage(result.usage)
        self.metrics.latency.labels("chat_completions").observe(time.monotonic() - self.started)
        return self.encoder.finish(result.finish_reason, result.usage)
