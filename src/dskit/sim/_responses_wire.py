"""OpenAI Responses wire format: the `response` object and its semantic stream events.

A planned `Reply` becomes output items in a fixed order: one `reasoning` item (its text
as `reasoning_text` content, `summary` empty, `encrypted_content` a UUID), one `message`
item (`output_text`, `phase: "final_answer"`), one `function_call` item per call.
Streamed, each item is `response.output_item.added`, its parts and deltas (one per planned
piece or argument fragment), `response.output_item.done`, between `response.created` +
`response.in_progress` and the terminal `response.completed` (or `.incomplete`,
`.failed`), every event `event: <type>` + `data: <json>` with a `sequence_number`, and no
`[DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from dskit.sim._cache import CacheResult
from dskit.sim._plan import PlannedCall, Reply

_dumps = orjson.dumps
Item = dict[str, Any]
Event = tuple[str, dict[str, Any]]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(reply: Reply, cache: CacheResult) -> dict[str, Any]:
    output = reply.completion_tokens
    return {
        "input_tokens": cache.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cache.hit_tokens},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": len(reply.reasoning)},
        "total_tokens": cache.prompt_tokens + output,
    }


def status_of(reply: Reply) -> str:
    if reply.finish_reason == "length":
        return "incomplete"
    return "failed" if reply.finish_reason == "insufficient_system_resource" else "completed"


class ResponseEncoder:
    """One Responses answer: the whole `response` or its stream events."""

    LEAD = 5  # created, in_progress, the first item and part added, the first delta
    TAIL = 4  # the last text done, part done, item done, the terminal event

    def __init__(self, echo: Mapping[str, Any]) -> None:
        """`echo`: the request fields a response repeats (model, instructions, tools...)."""
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.echo = echo
        self.ids = [_id("rs"), _id("msg")]

    def _call_id(self, index: int) -> str:
        while len(self.ids) < index + 3:
            self.ids.append(_id("fc"))
        return self.ids[index + 2]

    def items(self, reply: Reply) -> list[Item]:
        """The output items, complete."""
        done = "incomplete" if status_of(reply) != "completed" else "completed"
        items: list[Item] = []
        if reply.reasoning:
            items.append(self._reasoning("".join(reply.reasoning), "completed"))
        if reply.content:
            items.append(self._message([_text_part("".join(reply.content))], done))
        for index, call in enumerate(reply.calls):
            items.append(self._function_call(index, call, call.arguments, "completed"))
        return items

    def _reasoning(self, text: str | None, status: str) -> Item:
        content = [] if text is None else [{"type": "reasoning_text", "text": text}]
        item = {"id": self.ids[0], "type": "reasoning", "summary": [], "content": content}
        return {**item, "encrypted_content": self.ids[0][3:], "status": status}

    def _message(self, content: list[Item], status: str) -> Item:
        item = {"id": self.ids[1], "type": "message", "role": "assistant", "status": status}
        return {**item, "phase": "final_answer", "content": content}

    def _function_call(self, index: int, call: PlannedCall, arguments: str, status: str) -> Item:
        item = {"id": self._call_id(index), "type": "function_call", "call_id": call.id}
        return {**item, "name": call.name, "arguments": arguments, "status": status}

    def response(self, reply: Reply | None, cache: CacheResult) -> dict[str, Any]:
        """The `response` object; with `reply` None, the in-progress one the stream opens."""
        status = status_of(reply) if reply else "in_progress"
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        error = None
        if status == "failed":
            error = {"code": "server_error", "message": "insufficient system resource"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": incomplete,
            "background": False,
            "store": False,
            "previous_response_id": None,
            "parallel_tool_calls": True,
            **self.echo,
            "output": self.items(reply) if reply else [],
            "usage": usage(reply, cache) if reply else None,
        }

    def whole(self, reply: Reply, cache: CacheResult) -> bytes:
        return _dumps(self.response(reply, cache))

    def events(self, reply: Reply, cache: CacheResult) -> list[bytes]:
        opening = self.response(None, cache)
        events: list[Event] = [
            ("response.created", {"response": opening}),
            ("response.in_progress", {"response": opening}),
        ]
        items = self.items(reply)
        pieces = self._pieces(reply)
        for index, item in enumerate(items):
            events += _item_events(index, item, pieces[index])
        final = self.response(reply, cache)
        events.append((f"response.{final['status']}", {"response": final}))
        return [
            _encode(kind, {**data, "sequence_number": n}) for n, (kind, data) in enumerate(events)
        ]

    def _pieces(self, reply: Reply) -> list[list[str]]:
        """The deltas of each output item, in the order of `items`."""
        pieces = [reply.reasoning] if reply.reasoning else []
        if reply.content:
            pieces.append(reply.content)
        return pieces + [call.fragments for call in reply.calls]

    def malformed(self) -> bytes:
        return b'event: response.output_text.delta\ndata: {"delta":"\xe2\x80\xa6\n\n'


def _text_part(text: str) -> Item:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _opened(item: Item) -> Item:
    """The item as `output_item.added` shows it: in progress, nothing generated yet."""
    opened = {**item, "status": "in_progress"}
    if item["type"] == "function_call":
        opened["arguments"] = ""
    else:
        opened["content"] = []
    return opened


def _item_events(index: int, item: Item, deltas: list[str]) -> list[Event]:
    where = {"output_index": index}
    events: list[Event] = [("response.output_item.added", {**where, "item": _opened(item)})]
    at = {"item_id": item["id"], **where}
    if item["type"] == "function_call":
        events += [("response.function_call_arguments.delta", {**at, "delta": d}) for d in deltas]
        done = {**at, "name": item["name"], "arguments": item["arguments"]}
        events.append(("response.function_call_arguments.done", done))
    else:
        events += _part_events(item, {**at, "content_index": 0}, deltas)
    events.append(("response.output_item.done", {**where, "item": item}))
    return events


def _part_events(item: Item, at: dict[str, Any], deltas: list[str]) -> list[Event]:
    part = item["content"][0]
    kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
    extra: dict[str, Any] = {} if kind == "reasoning_text" else {"logprobs": []}
    empty = {**part, "text": ""}
    return [
        ("response.content_part.added", {**at, "part": empty}),
        *[(f"response.{kind}.delta", {**at, "delta": d, **extra}) for d in deltas],
        (f"response.{kind}.done", {**at, "text": part["text"], **extra}),
        ("response.content_part.done", {**at, "part": part}),
    ]


def _encode(kind: str, data: Mapping[str, Any]) -> bytes:
    payload = _dumps({"type": kind, **data})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"
