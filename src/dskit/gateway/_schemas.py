"""Request and response models at the API edge (pydantic: validation and the OpenAPI schema).

Only requests are parsed with these; streamed chunks are encoded by hand with orjson
(`_relay.py`), because per-chunk model building is what makes other proxies slow.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from dskit._models import DEFAULT_MODEL
from dskit.gateway.access._jwt import JWT_PATTERN

MAX_CONTENT = 1_000_000
MAX_CALL_ID = 200


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer has this shape (the OpenAI/DeepSeek one)."""

    error: ErrorDetail


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    reasoning_content: str | None = None
    prefix: bool | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """An OpenAI/DeepSeek chat completion request; unknown fields pass through upstream.
    Strict: `temperature: false` is an error, not 0 (as the API answers it)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="OpenAI's newer name: sent upstream as `max_tokens`"
    )
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SessionParams(BaseModel):
    """Request parameters a session sends with every turn (strict: no coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    thinking: bool | None = Field(
        default=None, description="Thinking mode (DeepSeek's default: on)"
    )
    effort: Literal["low", "high", "max", "minimal", "medium", "xhigh", "ultra"] | None = Field(
        default=None, description="Reasoning effort in thinking mode (aliases map to low/high/max)"
    )


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    system: str | None = Field(default=None, max_length=MAX_CONTENT)
    model: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=200)
    title: str | None = Field(default=None, max_length=200)
    parameters: SessionParams = Field(default_factory=SessionParams)


class MessageCreate(BaseModel):
    """A user turn. `stream`: SSE now; `background`: 202 at once (then poll or stream);
    `callback_url`: 202 at once and the result POSTed there when done."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(min_length=1, max_length=MAX_CONTENT)
    stream: bool = False
    background: bool = False
    callback_url: HttpUrl | None = None


class ToolResultCreate(BaseModel):
    """The result of one client-side tool call the answer is waiting for."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tool_call_id: str = Field(min_length=1, max_length=MAX_CALL_ID)
    content: str = Field(max_length=MAX_CONTENT, description="What the tool returned")


class ToolResultAccepted(BaseModel):
    """A result the paused answer took: once `pending` is empty, the answer goes on."""

    answer_id: str
    tool_call_id: str
    pending: list[str] = Field(description="The answer's tool calls still without a result")


class SessionSummary(BaseModel):
    id: str
    title: str
    model: str
    created: float
    updated: float
    message_count: int
    active_answer: str | None = None


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionSummary]


class StoredTurn(BaseModel):
    role: str
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    incomplete: bool = False
    usage: dict[str, Any] | None = None
    created: float = 0.0
    answer_id: str | None = None  # the gateway answer that wrote this turn, if one did


class SessionDetail(SessionSummary):
    system: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    messages: list[StoredTurn]


class AnswerHandle(BaseModel):
    """Where to follow an answer that runs in the background."""

    answer_id: str
    session_id: str
    stream_url: str
    events_url: str


class AnswerResult(BaseModel):
    """A finished answer (blocking mode, callbacks)."""

    answer_id: str
    session_id: str
    status: Literal["completed", "cancelled", "failed"]
    message: StoredTurn | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: ErrorDetail | None = None


class EventOut(BaseModel):
    id: str
    seq: int
    type: str
    data: dict[str, Any]


class EventPage(BaseModel):
    """A long-polling answer: events after the cursor, and the cursor to ask with next."""

    answer_id: str
    events: list[EventOut]
    finished: bool
    next_after: int


class LoginRequest(BaseModel):
    """A gateway key, or (with issuers configured) a JWT: exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
    token: str | None = Field(None, min_length=1, max_length=8192, pattern=JWT_PATTERN)

    @model_validator(mode="after")
    def _one_credential(self) -> LoginRequest:
        if (self.key is None) == (self.token is None):
            raise ValueError("give exactly one of key and token")
        return self


class LoginResult(BaseModel):
    """A token's sign-in: who, and when the cookie (the token) expires."""

    principal: str
    roles: list[str]
    expires_at: float
    refresh_url: str | None = None
    refresh_before_seconds: float


class GatewayInfo(BaseModel):
    upstream: Literal["deepseek", "custom", "simulator"]
    upstream_url: str
    auth: bool
    version: str


# ---- relayed formats: documented, not parsed (the bodies go upstream as they are) ------


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Errors of the Anthropic routes, in Anthropic's shape."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


class AnthropicCountTokensRequest(BaseModel):
    """An Anthropic Messages request without generation settings."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A DeepSeek name, or `claude*` (mapped by DeepSeek)")
    messages: list[dict[str, Any]] = Field(description="`{role: user|assistant, content}`")
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class AnthropicMessagesRequest(AnthropicCountTokensRequest):
    """An Anthropic Messages request (DeepSeek's supported subset: docs/deepseek-api §6);
    unknown fields pass through to the upstream."""

    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = None
    thinking: dict[str, Any] | None = Field(
        default=None, description="`{type: enabled|disabled}` (default enabled)"
    )
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(default=None, description="only `user_id`")
    output_config: dict[str, Any] | None = Field(default=None, description="only `effort`")


class ResponsesRequest(BaseModel):
    """An OpenAI Responses request, stateless (docs/deepseek-api §7); unknown fields pass
    through to the upstream (which ignores what it does not support)."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[dict[str, Any]] | None = Field(
        default=None, description="A string or input items (message, function_call, ...)"
    )
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = Field(default=None, description="`{effort}`")
    text: dict[str, Any] | None = Field(default=None, description="`{format}`")
    user: str | None = None
