"""Typed results and stream events.

These are light slotted dataclasses, not pydantic models: they are built once per chunk on
the streaming hot path. Conversion to and from the wire dicts lives here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Message: TypeAlias = dict[str, Any]


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) else 0


@dataclass(slots=True)
class Usage:
    """Token accounting for one reply (or a sum of replies)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_cache_hit_tokens: int = 0
    prompt_cache_miss_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        details = data.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=_int(data, "prompt_tokens"),
            completion_tokens=_int(data, "completion_tokens"),
            total_tokens=_int(data, "total_tokens"),
            prompt_cache_hit_tokens=_int(data, "prompt_cache_hit_tokens"),
            prompt_cache_miss_tokens=_int(data, "prompt_cache_miss_tokens"),
            reasoning_tokens=_int(details, "reasoning_tokens"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_cache_hit_tokens": self.prompt_cache_hit_tokens,
            "prompt_cache_miss_tokens": self.prompt_cache_miss_tokens,
            "prompt_tokens_details": {"cached_tokens": self.prompt_cache_hit_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.prompt_cache_hit_tokens + other.prompt_cache_hit_tokens,
            self.prompt_cache_miss_tokens + other.prompt_cache_miss_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(slots=True)
class ToolCall:
    """One function call the model asked for; `arguments` is the raw JSON text."""

    id: str
    name: str
    arguments: str
    index: int = 0
    type: str = "function"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], index: int = 0) -> ToolCall:
        function = data.get("function") or {}
        return cls(
            id=str(data.get("id") or ""),
            name=str(function.get("name") or ""),
            arguments=str(function.get("arguments") or ""),
            index=int(data.get("index", index)),
            type=str(data.get("type") or "function"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }


FinishReason: TypeAlias = Literal[
    "stop", "length", "content_filter", "tool_calls", "insufficient_system_resource"
]


@dataclass(slots=True)
class ChatResult:
    """A whole reply: what `chat()` returns and what `stream.final()` returns."""

    content: str = ""
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    id: str = ""
    model: str = ""
    created: int = 0
    system_fingerprint: str | None = None
    resumes: int = 0
    logprobs: dict[str, list[Any]] | None = None  # the chunks' lists joined, when asked for

    def to_message(self) -> Message:
        """The assistant message to append to a conversation's history."""
        message: Message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.reasoning_content is not None:
            message["reasoning_content"] = self.reasoning_content
        return message


# ---- stream events -------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ContentDelta:
    text: str
    type: Literal["content"] = "content"
    logprobs: dict[str, Any] | None = None  # the chunk's, when asked for (`logprobs=True`)


@dataclass(slots=True, frozen=True)
class ReasoningDelta:
    text: str
    type: Literal["reasoning"] = "reasoning"


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same `index` belong together."""

    index: int
    id: str | None
    name: str | None
    arguments: str
    type: Literal["tool_call"] = "tool_call"


@dataclass(slots=True, frozen=True)
class UsageEvent:
    usage: Usage
    type: Literal["usage"] = "usage"


@dataclass(slots=True, frozen=True)
class KeepAlive:
    """The server is holding the request in its queue (a `: keep-alive` comment)."""

    type: Literal["keep_alive"] = "keep_alive"


@dataclass(slots=True, frozen=True)
class Retrying:
    """A request failed before any output and will be sent again after `delay` seconds;
    `status` is the HTTP status that failed it (None for a connection failure)."""

    attempt: int
    delay: float
    reason: str
    status: int | None = None
    type: Literal["retrying"] = "retrying"


@dataclass(slots=True, frozen=True)
class Resumed:
    """The stream broke after partial output and continues through prefix completion.

    `restarted`: the break came inside the thinking, before any answer text, and the
    server would not continue the thinking from a prefix: the thinking starts again (the
    reasoning events after this one replace those before it; the answer text, none of
    which had come, is unaffected)."""

    attempt: int
    reason: str
    restarted: bool = False
    type: Literal["resumed"] = "resumed"


@dataclass(slots=True, frozen=True)
class Done:
    result: ChatResult
    type: Literal["done"] = "done"


StreamEvent: TypeAlias = (
    ContentDelta
    | ReasoningDelta
    | ToolCallDelta
    | UsageEvent
    | KeepAlive
    | Retrying
    | Resumed
    | Done
)


# ---- other endpoints -----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class BalanceInfo:
    currency: str
    total_balance: str
    granted_balance: str
    topped_up_balance: str


@dataclass(slots=True, frozen=True)
class Balance:
    is_available: bool
    balance_infos: list[BalanceInfo]

    @classmethod
    def from_dict(cls, data: Any) -> Balance:
        infos = data.get("balance_infos") if isinstance(data, dict) else None
        return cls(
            is_available=bool(data.get("is_available")) if isinstance(data, dict) else False,
            balance_infos=[
                BalanceInfo(
                    str(i.get("currency", "")),
                    str(i.get("total_balance", "")),
                    str(i.get("granted_balance", "")),
                    str(i.get("topped_up_balance", "")),
                )
                for i in infos or ()
            ],
        )


@dataclass(slots=True, frozen=True)
class FimResult:
    """A fill-in-the-middle completion."""

    text: str
    finish_reason: str | None
    usage: Usage | None
    id: str = ""
    model: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> FimResult:
        choices = (data.get("choices") if isinstance(data, dict) else None) or [{}]
        usage = data.get("usage") if isinstance(data, dict) else None
        return cls(
            text=str(choices[0].get("text") or ""),
            finish_reason=choices[0].get("finish_reason"),
            usage=Usage.from_dict(usage) if usage else None,
            id=str(data.get("id", "")) if isinstance(data, dict) else "",
            model=str(data.get("model", "")) if isinstance(data, dict) else "",
        )
