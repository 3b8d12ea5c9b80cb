"""Helpers for the simulator tests: request bodies and a strict SSE reader."""

from __future__ import annotations

import json
from typing import Any

KEY = "sk-test-abcd1234"
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat_body(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def sse_events(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert all(line.startswith("data: ") for line in lines), block
            events.append("\n".join(line[6:] for line in lines))
    return events


def sse_chunks(raw: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a complete stream, checking it ends with exactly one [DONE]."""
    events = sse_events(raw)
    assert events[-1] == "[DONE]", events[-3:]
    assert "[DONE]" not in events[:-1]
    return [json.loads(event) for event in events[:-1]]


def joined(chunks: list[dict[str, Any]], field: str = "content") -> str:
    parts = [c["choices"][0]["delta"].get(field) for c in chunks if c["choices"]]
    return "".join(p for p in parts if p)


def named_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of an SSE body whose events are `event:` + `data:` pairs
    (the Anthropic and Responses formats); checks the name matches the data's `type`."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name, block
        events.append((name, data))
    return events
