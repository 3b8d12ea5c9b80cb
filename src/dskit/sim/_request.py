"""Reading and checking request bodies the way DeepSeek's server does.

Three layers, each with its own status: the body must be JSON (400 "Failed to parse"),
it must deserialize into the request type (422 "Failed to deserialize ..."), and its
values must follow the rules shared with the client (`dskit._validate`, mostly 400) plus
the ones only a server knows (its models, their max_tokens limits, beta-only features).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from dskit._models import CURRENT_MODELS
from dskit._validate import (
    EFFORT_ALIASES,
    ROLES,
    Problem,
    check_chat_request,
    check_fim_request,
    is_integer,
    is_number,
    thinking_enabled,
)
from dskit.sim._config import FIM_MAX_TOKENS, SimConfig
from dskit.sim._plan import is_prefix_message

Receive = Callable[[], Awaitable[dict[str, Any]]]
_DESERIALIZE = "Failed to deserialize the JSON body into the target type"
CURRENT_IDS = frozenset(m.id for m in CURRENT_MODELS)


class RequestError(Exception):
    """A request the simulator refuses: rendered as DeepSeek's error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole request body, refusing (413) one over `limit` bytes as soon as it shows."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"Request body too large: the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "The client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"Request body too large: the limit is {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise RequestError(415, "Expected request with `Content-Type: application/json`")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"Failed to parse the request body as JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(422, f"{_DESERIALIZE}: invalid type: {_kind(body)}, expected struct")
    return body


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {orjson.dumps(value[:40]).decode()}"
    return "sequence" if isinstance(value, list) else "map"


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _str(value: Any) -> bool:
    return isinstance(value, str)


def _stop(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(map(_str, value)))


def _obj(value: Any) -> bool:
    return isinstance(value, dict)


def _thinking(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") in ("enabled", "disabled")


def _content(value: Any) -> bool:
    return isinstance(value, str | list)


# field -> (check, expected type as the error names it)
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_optional(is_number), "f32"),
    "top_p": (_optional(is_number), "f32"),
    "frequency_penalty": (_optional(is_number), "f32"),
    "presence_penalty": (_optional(is_number), "f32"),
    "max_tokens": (_optional(is_integer), "u32"),
    "top_logprobs": (_optional(is_integer), "u32"),
    "stream": (_optional(lambda v: isinstance(v, bool)), "a boolean"),
    "logprobs": (_optional(lambda v: isinstance(v, bool)), "a boolean"),
    "stop": (_optional(_stop), "a string or a sequence of strings"),
    "stream_options": (_optional(_obj), "struct StreamOptions"),
    "response_format": (_optional(_obj), "struct ResponseFormat"),
    "tools": (_optional(lambda v: isinstance(v, list) and all(map(_obj, v))), "a sequence"),
    "tool_choice": (_optional(lambda v: isinstance(v, str | dict)), "a string or a map"),
    "user_id": (_optional(_str), "a string"),
    "suffix": (_optional(_str), "a string"),
    "echo": (_optional(lambda v: isinstance(v, bool)), "a boolean"),
    "thinking": (_optional(_thinking), "struct ThinkingOptions"),
}
_MESSAGE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "role": (_str, "a string"),
    "content": (_optional(_content), "a string or a sequence"),
    "name": (_optional(_str), "a string"),
    "prefix": (_optional(lambda v: isinstance(v, bool)), "a boolean"),
    "reasoning_content": (_optional(_str), "a string"),
    "tool_call_id": (_optional(_str), "a string"),
    "tool_calls": (_optional(lambda v: isinstance(v, list)), "a sequence"),
}


def _bad(path: str, value: Any, expected: str) -> RequestError:
    message = f"{_DESERIALIZE}: {path}: invalid type: {_kind(value)}, expected {expected}"
    return RequestError(422, message)


def _check_fields(body: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> None:
    for name, (check, expected) in spec.items():
        if name in body and not check(body[name]):
            raise _bad(f"{where}{name}", body[name], expected)


def _check_call(path: str, call: Any) -> None:
    if not isinstance(call, dict):
        raise _bad(path, call, "struct ToolCall")
    function = call.get("function")
    if not isinstance(function, dict):
        raise _bad(f"{path}.function", function, "struct Function")
    for name in ("name", "arguments"):
        if name in function and not isinstance(function[name], str):
            raise _bad(f"{path}.function.{name}", function[name], "a string")


def _check_message_types(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _bad(where, message, "struct Message")
    if "role" not in message:
        raise RequestError(422, f"{_DESERIALIZE}: {where}: missing field `role`")
    _check_fields(message, _MESSAGE_FIELDS, f"{where}.")
    if message["role"] not in ROLES:
        expected = ", ".join(f"`{r}`" for r in ROLES)
        raise RequestError(
            422,
            f"{_DESERIALIZE}: {where}.role: unknown variant `{message['role']}`, "
            f"expected one of {expected} at line 1 column 1",
        )
    for position, call in enumerate(message.get("tool_calls") or ()):
        _check_call(f"{where}.tool_calls[{position}]", call)


def _check_effort(effort: Any) -> None:
    if effort is None or effort in EFFORT_ALIASES or effort == "none":
        return
    variants = ", ".join(f"`{e}`" for e in (*EFFORT_ALIASES, "none"))
    raise RequestError(
        422,
        f"{_DESERIALIZE}: reasoning_effort: unknown variant {_kind(effort)}, "
        f"expected one of {variants}",
    )


def check_types(body: Mapping[str, Any], required: tuple[str, ...]) -> None:
    """Raise 422 where a field cannot deserialize into the type DeepSeek expects."""
    for name in required:
        if name not in body:
            raise RequestError(422, f"{_DESERIALIZE}: missing field `{name}`")
    if not isinstance(body.get("model", ""), str):
        raise _bad("model", body["model"], "a string")
    _check_fields(body, _FIELDS, "")
    _check_effort(body.get("reasoning_effort"))
    if "messages" in body:
        if not isinstance(body["messages"], list):
            raise _bad("messages", body["messages"], "a sequence")
        for index, message in enumerate(body["messages"]):
            _check_message_types(index, message)
    for index, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool.get("function"), dict):
            raise _bad(f"tools[{index}].function", tool.get("function"), "struct Function")
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad("tool_choice.function", function, "struct Function with a name")
    options = body.get("stream_options") or {}
    if not isinstance(options.get("include_usage", False), bool | None):
        raise _bad("stream_options.include_usage", options["include_usage"], "a boolean")


def _known_model(body: Mapping[str, Any], config: SimConfig) -> str:
    model: str = body["model"]
    if model not in config.models:
        supported = ", ".join(m for m in config.models if m in CURRENT_IDS) or "none"
        raise RequestError(
            400, f"The supported API model names are {supported}, but you passed {model}."
        )
    return model


def _max_tokens_within(body: Mapping[str, Any], limit: int) -> None:
    """The server-side cap (the shared checks already made max_tokens a positive int)."""
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > limit:
        raise RequestError(
            400,
            f"Invalid max_tokens value, the valid range of max_tokens is [1, {limit}]",
            "max_tokens",
        )


def _raise_problem(problem: Problem | None) -> None:
    if problem is not None:
        raise RequestError(problem.status, problem.message, problem.param)


def check_chat(body: dict[str, Any], config: SimConfig, beta: bool) -> None:
    """Every check on a chat request; raises RequestError with DeepSeek's status."""
    check_types(body, ("model", "messages"))
    _raise_problem(check_chat_request(body))
    _max_tokens_within(body, config.max_tokens_limit(_known_model(body, config)))
    last = body["messages"][-1]
    if not beta and is_prefix_message(last):
        raise RequestError(
            400,
            "Chat Prefix Completion is a beta feature: send it to /beta/chat/completions",
            "messages",
        )
    if (
        is_prefix_message(last) and thinking_enabled(body) and last.get("reasoning_content")
        and not config.reasoning_prefix
    ):  # fmt: skip
        raise RequestError(400, REASONING_PREFIX, "messages")


# the simulator's strict reading where DeepSeek's docs are silent (docs/simulator.md)
REASONING_PREFIX = "A prefix message cannot carry reasoning_content in thinking mode"


def check_fim(body: dict[str, Any], config: SimConfig) -> None:
    """Every check on a FIM (`/beta/completions`) request."""
    check_types(body, ("model", "prompt"))
    if not isinstance(body["prompt"], str):
        raise _bad("prompt", body["prompt"], "a string")
    _raise_problem(check_fim_request(body))
    _known_model(body, config)
    if "thinking" in body and thinking_enabled(body):
        raise RequestError(400, "FIM completion is not available in thinking mode", "thinking")
    _max_tokens_within(body, FIM_MAX_TOKENS)
