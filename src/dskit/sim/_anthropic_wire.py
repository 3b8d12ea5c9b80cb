"""Anthropic's Messages wire format: the `message` object, its stream events, errors.

A planned `Reply` becomes content blocks in a fixed order: `thinking` (with a
`signature`, the message's UUID), `text`, then one `tool_use` per call. Streamed, each
block is `content_block_start`, its deltas (one per planned piece or argument fragment),
`content_block_stop`, between `message_start` (+ `ping`) and `message_delta` (stop reason,
usage) + `message_stop`, every event as `event: <type>` + `data: <json>`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from dskit.sim._cache import CacheResult
from dskit.sim._plan import PlannedCall, Reply
from dskit.sim._wire import ERRORS

_dumps = orjson.dumps

# status -> Anthropic's error type (https://docs.anthropic.com/en/api/errors)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

# DeepSeek's finish reason -> Anthropic's stop_reason ("stop" is end_turn or stop_sequence)
STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


def anthropic_error_body(status: int, message: str | None, param: str | None) -> bytes:
    """`{"type": "error", "error": {"type", "message"}}` (Anthropic has no `param`)."""
    del param
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    text = message or ERRORS.get(status, ("Error", ""))[0]
    return _dumps({"type": "error", "error": {"type": kind, "message": text}})


def stop_reason(reply: Reply, stop_sequence: str | None) -> str:
    """Anthropic's stop_reason; DeepSeek's `insufficient_system_resource` passes through."""
    if reply.finish_reason == "stop":
        return "stop_sequence" if stop_sequence is not None else "end_turn"
    return STOP_REASONS.get(reply.finish_reason, reply.finish_reason)


def usage(reply: Reply, cache: CacheResult) -> dict[str, int]:
    """Anthropic's usage: `input_tokens` excludes the tokens read from the cache."""
    return {
        "input_tokens": cache.miss_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache.hit_tokens,
        "output_tokens": reply.completion_tokens,
    }


def tool_input(call: PlannedCall) -> Any:
    """The call's arguments as a JSON value ({} when max_tokens cut them short)."""
    try:
        return orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        return {}


class MessageEncoder:
    """One Anthropic response: the whole `message` or its stream events."""

    LEAD = 4  # message_start, the first content_block_start, ping, the first delta
    TAIL = 3  # the last content_block_stop, message_delta, message_stop

    def __init__(self, model: str, stop_sequence: str | None = None) -> None:
        self.uuid = str(uuid.uuid4())
        self.id = f"msg_{self.uuid.replace('-', '')}"
        self.model = model
        self.stop_sequence = stop_sequence

    def _stop_sequence(self, reply: Reply) -> str | None:
        return self.stop_sequence if reply.finish_reason == "stop" else None

    def blocks(self, reply: Reply) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if reply.reasoning:
            thinking = "".join(reply.reasoning)
            blocks.append({"type": "thinking", "thinking": thinking, "signature": self.uuid})
        if reply.content:
            blocks.append({"type": "text", "text": "".join(reply.content)})
        for call in reply.calls:
            blocks.append(_tool_use(call, tool_input(call)))
        return blocks

    def message(self, reply: Reply | None, cache: CacheResult) -> dict[str, Any]:
        """The `message` object; with `reply` None, the empty one `message_start` carries."""
        stop = self._stop_sequence(reply) if reply else None
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks(reply) if reply else [],
            "stop_reason": stop_reason(reply, stop) if reply else None,
            "stop_sequence": stop,
            "usage": usage(reply or Reply(), cache),
        }

    def whole(self, reply: Reply, cache: CacheResult) -> bytes:
        return _dumps(self.message(reply, cache))

    def events(self, reply: Reply, cache: CacheResult) -> list[bytes]:
        events = [_event("message_start", {"message": self.message(None, cache)})]
        for index, (start, deltas) in enumerate(self._block_parts(reply)):
            events.append(_event("content_block_start", {"index": index, "content_block": start}))
            if index == 0:
                events.append(_event("ping", {}))
            events += [_event("content_block_delta", {"index": index, "delta": d}) for d in deltas]
            events.append(_event("content_block_stop", {"index": index}))
        if len(events) == 1:
            events.append(_event("ping", {}))
        stop = self._stop_sequence(reply)
        delta = {"stop_reason": stop_reason(reply, stop), "stop_sequence": stop}
        events.append(_event("message_delta", {"delta": delta, "usage": usage(reply, cache)}))
        events.append(_event("message_stop", {}))
        return events

    def _block_parts(self, reply: Reply) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        parts: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if reply.reasoning:
            deltas = [{"type": "thinking_delta", "thinking": p} for p in reply.reasoning]
            deltas.append({"type": "signature_delta", "signature": self.uuid})
            parts.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
        if reply.content:
            deltas = [{"type": "text_delta", "text": p} for p in reply.content]
            parts.append(({"type": "text", "text": ""}, deltas))
        for call in reply.calls:
            fragments = call.fragments
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
            parts.append((_tool_use(call, {}), deltas))
        return parts

    def malformed(self) -> bytes:
        head = b'event: content_block_delta\ndata: {"type":"content_block_delta",'
        return head + b'"delta":"\xe2\x80\xa6\n\n'


def _tool_use(call: PlannedCall, value: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": value}


def _event(kind: str, data: Mapping[str, Any]) -> bytes:
    payload = _dumps({"type": kind, **data})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"
