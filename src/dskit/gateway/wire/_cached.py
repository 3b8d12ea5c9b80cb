"""Cached answers on the OpenAI-compatible surface: as the SSE or the `chat.completion`
a live one would have been, marked `"cached": true`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dskit.client._types import ChatResult
from dskit.gateway.backends._cache import replay_events
from dskit.gateway.wire._relay import DONE, ChunkEncoder, completion_body, encode_event


def _mark(chunk: bytes) -> bytes:
    """`data: {...}` -> `data: {"cached":true,...}`: every chunk of a replay says so."""
    return b'data: {"cached":true,' + chunk[7:] if chunk.startswith(b"data: {") else chunk


def cached_chunks(result: ChatResult, model: str) -> Iterator[bytes]:
    """A cached answer as the SSE a live one would have been (reasoning, content, usage)."""
    encoder = ChunkEncoder.answering(result, model)
    for event in replay_events(result):
        if event.type == "done":
            yield _mark(encoder.finish(result.finish_reason, result.usage))
            yield DONE
            return
        data = encode_event(encoder, event)
        if data is not None:
            yield _mark(data)


def cached_body(result: ChatResult, model: str) -> dict[str, Any]:
    """A cached answer as a `chat.completion` object, marked `"cached": true`."""
    return {**completion_body(result, model), "cached": True}
