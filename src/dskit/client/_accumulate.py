"""Turn streamed chunks into typed events and a whole result, per the wire format.

Rules from the field: `null` never becomes text; tool-call fragments merge by `index`
(only the first carries the id and name); usage is the last non-null one seen, whether it
rides on the finish chunk or on a separate chunk with empty `choices`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dskit.client._types import (
    ChatResult,
    ContentDelta,
    ReasoningDelta,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)


@dataclass(slots=True)
class _ToolCallParts:
    index: int
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, fragment: dict[str, Any]) -> ToolCallDelta:
        function = fragment.get("function") or {}
        call_id, name = fragment.get("id"), function.get("name")
        arguments = function.get("arguments") or ""
        if call_id:
            self.id = call_id
        if name:
            self.name += name
        if arguments:
            self.arguments.append(arguments)
        return ToolCallDelta(self.index, call_id or None, name or None, arguments)

    def build(self) -> ToolCall:
        return ToolCall(
            id=self.id, name=self.name, arguments="".join(self.arguments), index=self.index
        )


@dataclass(frozen=True, slots=True)
class Seed:
    """The start of an answer the caller already has, for a stream to continue
    (`continue_stream`): `pieces` is how many streamed pieces it took (they count
    against `max_tokens`, as a resume's do)."""

    content: str
    reasoning: str | None = None
    pieces: int = 0


class Accumulator:
    """The state of one answer, across every attempt that delivered a part of it
    (and the `Seed` it continues, if any: part of the answer, never an event)."""

    __slots__ = (
        "_content",
        "_logprobs",
        "_reasoning",
        "_tools",
        "created",
        "finish_reason",
        "id",
        "model",
        "pieces",
        "system_fingerprint",
        "usage",
    )

    def __init__(self, seed: Seed | None = None) -> None:
        self._content: list[str] = [seed.content] if seed and seed.content else []
        self._reasoning: list[str] | None = [seed.reasoning] if seed and seed.reasoning else None
        self._tools: dict[int, _ToolCallParts] = {}
        self._logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.id = ""
        self.model = ""
        self.created = 0
        self.system_fingerprint: str | None = None
        self.pieces = seed.pieces if seed else 0

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def reasoning(self) -> str | None:
        return None if self._reasoning is None else "".join(self._reasoning)

    @property
    def has_output(self) -> bool:
        return bool(self._content or self._reasoning or self._tools)

    @property
    def has_tool_calls(self) -> bool:
        return bool(self._tools)

    def add(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        """Digest one chunk; return the events it carries, in wire order."""
        if not self.id:
            self._take_metadata(chunk)
        events: list[StreamEvent] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                self._add_choice(choice, events)
        usage = chunk.get("usage")
        if usage:
            self.usage = Usage.from_dict(usage)
            events.append(UsageEvent(self.usage))
        return events

    def _take_metadata(self, chunk: dict[str, Any]) -> None:
        self.id = str(chunk.get("id") or "")
        self.model = str(chunk.get("model") or "")
        created = chunk.get("created")
        self.created = created if isinstance(created, int) else 0
        self.system_fingerprint = chunk.get("system_fingerprint")

    def _add_choice(self, choice: dict[str, Any], events: list[StreamEvent]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if reasoning is not None:
            self._add_reasoning(reasoning, events)
        logprobs = self._add_logprobs(choice.get("logprobs"))
        content = delta.get("content")
        if content:
            self._content.append(content)
            self.pieces += 1
            events.append(ContentDelta(content, logprobs=logprobs))
        for fragment in delta.get("tool_calls") or ():
            events.append(self._tool(fragment).add(fragment))
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish

    def _add_logprobs(self, logprobs: Any) -> dict[str, Any] | None:
        """A chunk's `logprobs` (`{"content": [...]}`): its lists joined onto the answer's."""
        if not isinstance(logprobs, dict):
            return None
        if self._logprobs is None:
            self._logprobs = {}
        for key, value in logprobs.items():
            if isinstance(value, list):
                self._logprobs.setdefault(key, []).extend(value)
        return logprobs

    def restart_reasoning(self) -> None:
        """Forget the reasoning so far: the answer's thinking starts again."""
        if self._reasoning:
            self.pieces = max(0, self.pieces - len(self._reasoning))
        self._reasoning = None

    def _add_reasoning(self, text: str, events: list[StreamEvent]) -> None:
        if self._reasoning is None:
            self._reasoning = []
        if text:
            self._reasoning.append(text)
            self.pieces += 1
            events.append(ReasoningDelta(text))

    def _tool(self, fragment: dict[str, Any]) -> _ToolCallParts:
        index = int(fragment.get("index", len(self._tools)))
        parts = self._tools.get(index)
        if parts is None:
            parts = self._tools[index] = _ToolCallParts(index)
        return parts

    def result(self, resumes: int = 0) -> ChatResult:
        return ChatResult(
            content=self.content,
            reasoning_content=self.reasoning,
            tool_calls=[parts.build() for _, parts in sorted(self._tools.items())],
            finish_reason=self.finish_reason,
            usage=self.usage,
            id=self.id,
            model=self.model,
            created=self.created,
            system_fingerprint=self.system_fingerprint,
            resumes=resumes,
            logprobs=None
            if self._logprobs is None
            else {k: list(v) for k, v in self._logprobs.items()},
        )
