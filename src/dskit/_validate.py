"""The rules a chat request must follow, in one place.

The client checks a request with these rules before sending it (raising ValidationError)
and the simulator checks what it receives with the same rules (answering 400 or 422 the
way DeepSeek does). Model names are not checked here: new models appear all the time, and
only the server knows its list. Each check returns the first problem found, like the API.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from dskit._models import MAX_OUTPUT_TOKENS
from dskit._tokens import content_text

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
USER_ID = re.compile(r"^[a-zA-Z0-9_-]{1,512}$")
MAX_TOOLS = 128
MAX_STOP = 16
ROLES = ("system", "user", "assistant", "tool", "latest_reminder")
TOOL_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a request: the parameter, a readable message, the status."""

    param: str
    message: str
    status: int = 400
    hint: str = ""  # how to fix it, for the client's error (the server sends only message)


# requested effort -> the effort the model runs with (thinking_mode guide, Nov 2026)
EFFORT_ALIASES = {
    "minimal": "low",
    "low": "low",
    "medium": "high",
    "high": "high",
    "xhigh": "high",
    "max": "max",
    "ultra": "max",
}


def thinking_enabled(body: Mapping[str, Any]) -> bool:
    """Whether a chat request runs in thinking mode: on unless it is switched off."""
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") == "disabled":
        return False
    return body.get("reasoning_effort") != "none"


def effort_of(body: Mapping[str, Any]) -> str | None:
    """The effort a request's thinking runs at (None without thinking)."""
    if not thinking_enabled(body):
        return None
    return EFFORT_ALIASES.get(str(body.get("reasoning_effort") or "high"), "high")


def is_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number (bool is not one, though Python says it is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _range(body: Mapping[str, Any], name: str, low: float, high: float) -> Problem | None:
    value = body.get(name)
    if value is None:
        return None
    if not is_number(value) or not low <= value <= high:
        return Problem(
            name,
            f"Invalid {name} value, the valid range of {name} is [{low:g}, {high:g}]",
        )
    return None


def _check_numbers(body: Mapping[str, Any]) -> Problem | None:
    for name, low, high in (
        ("temperature", 0, 2),
        ("top_p", 0, 1),
        ("frequency_penalty", -2, 2),
        ("presence_penalty", -2, 2),
        ("top_logprobs", 0, 20),
    ):
        if problem := _range(body, name, low, high):
            return problem
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not is_integer(max_tokens) or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS
    ):
        return Problem(
            "max_tokens",
            f"Invalid max_tokens value, the valid range of max_tokens is [1, {MAX_OUTPUT_TOKENS}]",
        )
    return None


def _check_stop(body: Mapping[str, Any]) -> Problem | None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return None
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        return Problem("stop", "Invalid stop value, it must be a string or a list of strings")
    if len(stop) > MAX_STOP:
        return Problem("stop", f"Invalid stop value, at most {MAX_STOP} stop sequences")
    return None


def _check_message(index: int, message: Any, is_last: bool) -> Problem | None:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        return Problem(where, f"Invalid message at index {index}: it must be an object")
    role = message.get("role")
    if role not in ROLES:
        return Problem(
            f"{where}.role",
            f"Invalid role {role!r} at message index {index}: expected one of {', '.join(ROLES)}",
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        return Problem(f"{where}.content", f"Invalid content at message index {index}")
    if role in ("system", "user") and not content:
        return Problem(
            f"{where}.content", f"Missing content in the {role} message at index {index}"
        )
    if role == "tool" and not message.get("tool_call_id"):
        return Problem(
            f"{where}.tool_call_id", f"Missing tool_call_id in the tool message at index {index}"
        )
    if message.get("prefix") and (role != "assistant" or not is_last):
        return Problem(
            f"{where}.prefix",
            "The prefix flag is only allowed on the last message, "
            "which must be an assistant message",
        )
    return None


def _check_tool_results(messages: Sequence[Mapping[str, Any]]) -> Problem | None:
    """Every assistant tool call must be answered by tool messages right after it."""
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") or []
        if message.get("role") != "assistant" or not calls:
            continue
        wanted = {str(call.get("id")) for call in calls if isinstance(call, Mapping)}
        following = messages[index + 1 : index + 1 + len(wanted)]
        answered = {str(m.get("tool_call_id")) for m in following if m.get("role") == "tool"}
        if not wanted <= answered:
            return Problem(
                f"messages[{index}].tool_calls",
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id' (message index {index})",
            )
    return None


def _check_messages(body: Mapping[str, Any]) -> Problem | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Problem("messages", "Invalid messages: a non-empty list of messages is required")
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if problem := _check_message(index, message, index == last):
            return problem
    return _check_tool_results(messages)


def _check_tool(index: int, tool: Any) -> Problem | None:
    where = f"tools[{index}]"
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        return Problem(where, f"Invalid tool at index {index}: type must be 'function'")
    function = tool.get("function")
    if not isinstance(function, Mapping):
        return Problem(f"{where}.function", f"Invalid tool at index {index}: missing function")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        return Problem(
            f"{where}.function.name",
            f"Invalid function name {name!r}: it must match [a-zA-Z0-9_-] and be 1 to 64 long",
        )
    params = function.get("parameters")
    if params is not None and not isinstance(params, Mapping):
        return Problem(f"{where}.function.parameters", "Function parameters must be a JSON Schema")
    return None


def _check_tools(body: Mapping[str, Any]) -> Problem | None:
    tools = body.get("tools")
    if tools is None:
        return _check_tool_choice(body, [])
    if not isinstance(tools, list):
        return Problem("tools", "Invalid tools: it must be a list")
    if len(tools) > MAX_TOOLS:
        return Problem("tools", f"Invalid tools: at most {MAX_TOOLS} tools are supported")
    for index, tool in enumerate(tools):
        if problem := _check_tool(index, tool):
            return problem
    return _check_tool_choice(body, tools)


def _check_tool_choice(body: Mapping[str, Any], tools: list[Any]) -> Problem | None:
    choice = body.get("tool_choice")
    if choice is None or choice in TOOL_CHOICES:
        return None
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        names = {t["function"]["name"] for t in tools}
        if choice.get("type") == "function" and name in names:
            return None
        return Problem("tool_choice", f"Invalid tool_choice: no tool named {name!r} is offered")
    return Problem(
        "tool_choice", "Invalid tool_choice: expected none, auto, required or a function"
    )


def _check_misc(body: Mapping[str, Any]) -> Problem | None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return Problem("stream", "Invalid stream value, it must be a boolean")
    if body.get("stream_options") is not None and not stream:
        return Problem("stream_options", "stream_options is only allowed when stream is true")
    if body.get("n") not in (None, 1):
        return Problem("n", "Invalid n value (currently only n = 1 is supported)")
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        return Problem("response_format", "This response_format type is unavailable now")
    if fmt is not None and (
        not isinstance(fmt, Mapping) or fmt.get("type") not in ("text", "json_object")
    ):
        return Problem(
            "response_format", "Invalid response_format type: expected text or json_object"
        )
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object" and not _says_json(body):
        return Problem("response_format", JSON_WORD, hint=JSON_WORD_HINT)
    user_id = body.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or not USER_ID.match(user_id)):
        return Problem("user_id", "Invalid user_id: [a-zA-Z0-9_-], at most 512 characters")
    return None


JSON_WORD = (
    "Prompt must contain the word 'json' in some form to use 'response_format' of type "
    "'json_object'."
)
JSON_WORD_HINT = "Say in the system or user message that the answer is JSON, and show its shape"


def _says_json(body: Mapping[str, Any]) -> bool:
    """JSON mode's rule: some message of the prompt names JSON."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return True  # the messages' own checks report what is wrong
    return any(
        isinstance(m, Mapping) and "json" in content_text(m.get("content")).lower()
        for m in messages
    )


PASSBACK = "The `reasoning_content` in the thinking mode must be passed back to the API."
FORCED_CHOICE = "Thinking mode does not support this tool_choice"


def _check_thinking(body: Mapping[str, Any]) -> Problem | None:
    """DeepSeek's thinking-mode rules (Nov 2026): no forced tool_choice, and with tools the
    reasoning of every earlier assistant turn must come back."""
    if not thinking_enabled(body):
        return None
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, Mapping):
        return Problem(
            "tool_choice",
            FORCED_CHOICE,
            hint="switch thinking off to force a tool call (thinking=False, or "
            '"thinking": {"type": "disabled"} in the request)',
        )
    if not body.get("tools"):
        return None
    for index, message in enumerate(body.get("messages") or []):
        if message.get("role") == "assistant" and message.get("reasoning_content") is None:
            return Problem(
                f"messages[{index}].reasoning_content",
                PASSBACK,
                hint="send every earlier assistant turn back with its reasoning_content",
            )
    return None


CHECKS: tuple[Callable[[Mapping[str, Any]], Problem | None], ...] = (
    _check_messages,
    _check_numbers,
    _check_stop,
    _check_tools,
    _check_misc,
    _check_thinking,
)


def check_chat_request(body: Mapping[str, Any]) -> Problem | None:
    """The first problem with a chat-completions request body, or None when it is valid."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Problem("model", "Missing model: the model parameter is required")
    for check in CHECKS:
        if problem := check(body):
            return problem
    return None


def check_fim_request(body: Mapping[str, Any]) -> Problem | None:
    """The first problem with a FIM (`/beta/completions`) request body, or None."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Problem("model", "Missing model: the model parameter is required")
    if not isinstance(body.get("prompt"), str):
        return Problem("prompt", "Invalid prompt: it must be a string")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        return Problem("suffix", "Invalid suffix: it must be a string")
    return _check_numbers(body) or _check_stop(body)
