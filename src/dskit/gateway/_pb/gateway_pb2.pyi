from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Parameters(_message.Message):
    __slots__ = ("temperature", "top_p", "max_tokens", "stop", "frequency_penalty", "presence_penalty", "thinking", "effort")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    THINKING_FIELD_NUMBER: _ClassVar[int]
    EFFORT_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    frequency_penalty: float
    presence_penalty: float
    thinking: bool
    effort: str
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., thinking: _Optional[bool] = ..., effort: _Optional[str] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("session_id", "content", "after", "model", "system", "parameters", "title")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    after: str
    model: str
    system: str
    parameters: Parameters
    title: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., after: _Optional[str] = ..., model: _Optional[str] = ..., system: _Optional[str] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ..., title: _Optional[str] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("message", "cancel", "resume", "tool_result")
    class Message(_message.Message):
        __slots__ = ("content", "session_id", "model", "system", "parameters")
        CONTENT_FIELD_NUMBER: _ClassVar[int]
        SESSION_ID_FIELD_NUMBER: _ClassVar[int]
        MODEL_FIELD_NUMBER: _ClassVar[int]
        SYSTEM_FIELD_NUMBER: _ClassVar[int]
        PARAMETERS_FIELD_NUMBER: _ClassVar[int]
        content: str
        session_id: str
        model: str
        system: str
        parameters: Parameters
        def __init__(self, content: _Optional[str] = ..., session_id: _Optional[str] = ..., model: _Optional[str] = ..., system: _Optional[str] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ...) -> None: ...
    class Cancel(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Resume(_message.Message):
        __slots__ = ("after",)
        AFTER_FIELD_NUMBER: _ClassVar[int]
        after: str
        def __init__(self, after: _Optional[str] = ...) -> None: ...
    class ToolResult(_message.Message):
        __slots__ = ("tool_call_id", "content", "answer_id")
        TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
        CONTENT_FIELD_NUMBER: _ClassVar[int]
        ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
        tool_call_id: str
        content: str
        answer_id: str
        def __init__(self, tool_call_id: _Optional[str] = ..., content: _Optional[str] = ..., answer_id: _Optional[str] = ...) -> None: ...
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    message: ClientFrame.Message
    cancel: ClientFrame.Cancel
    resume: ClientFrame.Resume
    tool_result: ClientFrame.ToolResult
    def __init__(self, message: _Optional[_Union[ClientFrame.Message, _Mapping]] = ..., cancel: _Optional[_Union[ClientFrame.Cancel, _Mapping]] = ..., resume: _Optional[_Union[ClientFrame.Resume, _Mapping]] = ..., tool_result: _Optional[_Union[ClientFrame.ToolResult, _Mapping]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("index", "id", "name", "arguments")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    name: str
    arguments: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "reasoning_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CACHE_HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CACHE_MISS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_cache_hit_tokens: int
    prompt_cache_miss_tokens: int
    reasoning_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., prompt_cache_hit_tokens: _Optional[int] = ..., prompt_cache_miss_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ...) -> None: ...

class ToolWait(_message.Message):
    __slots__ = ("tool_calls", "timeout_seconds")
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    timeout_seconds: float
    def __init__(self, tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class ToolResultAccepted(_message.Message):
    __slots__ = ("tool_call_id", "pending")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    pending: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tool_call_id: _Optional[str] = ..., pending: _Optional[_Iterable[str]] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("finish_reason", "usage")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    usage: Usage
    def __init__(self, finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("type", "message", "code", "status")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    code: str
    status: int
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., code: _Optional[str] = ..., status: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "session_id", "answer_id", "content", "reasoning", "tool_call", "usage", "done", "error", "tool_wait", "accepted", "rejected")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOOL_WAIT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    session_id: str
    answer_id: str
    content: str
    reasoning: str
    tool_call: ToolCall
    usage: Usage
    done: Done
    error: Error
    tool_wait: ToolWait
    accepted: ToolResultAccepted
    rejected: Error
    def __init__(self, id: _Optional[str] = ..., session_id: _Optional[str] = ..., answer_id: _Optional[str] = ..., content: _Optional[str] = ..., reasoning: _Optional[str] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., tool_wait: _Optional[_Union[ToolWait, _Mapping]] = ..., accepted: _Optional[_Union[ToolResultAccepted, _Mapping]] = ..., rejected: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
