"""Anthropic Messages (`/anthropic/v1/messages`, `.../count_tokens`) onto the chat planning.

A Messages request is translated into the chat body the rest of the simulator already
checks and plans (so the answer, reasoning, tool calls, usage, faults and latency are the
chat ones), following DeepSeek's compatibility table (docs/simulator.md):

- supported: model (`claude-opus*` -> deepseek-v4-pro, other `claude*` -> deepseek-flash),
  max_tokens, system (string or text blocks), messages (text, image, thinking, tool_use,
  tool_result blocks), stop_sequences, stream, temperature, top_p, thinking
  (enabled/disabled), output_config.effort, tools, tool_choice, metadata.user_id;
- ignored: top_k, container, mcp_servers, service_tier, thinking.budget_tokens, other
  metadata and output_config keys, cache_control, citations, is_error,
  disable_parallel_tool_use, server tools (web search is not simulated), the
  `anthropic-version` and `anthropic-beta` headers;
- refused (400 invalid_request_error): the unsupported content blocks (document,
  search_result, redacted_thinking, code_execution_tool_result, mcp_tool_use,
  mcp_tool_result, container_upload), other tool types, a `file` image without the
  files-api beta header, unknown model names, and whatever chat refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from dskit._tokens import content_text, count_prompt
from dskit._validate import PASSBACK, thinking_enabled
from dskit.sim._anthropic_wire import MessageEncoder
from dskit.sim._completions import answer_chat, checked, read_request
from dskit.sim._plan import plan_chat
from dskit.sim._request import RequestError, check_chat

if TYPE_CHECKING:
    from dskit.sim._app import Request, SimApp
    from dskit.sim._stream import Send

ChatMessage = dict[str, Any]
THINKING_PASSBACK = "The `content[].thinking` in the thinking mode must be passed back to the API."
UNSUPPORTED_BLOCKS = frozenset(
    {
        "document",
        "search_result",
        "redacted_thinking",
        "code_execution_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
IGNORED_BLOCKS = frozenset({"server_tool_use", "web_search_tool_result"})
FILES_BETA = "files-api-2025-04-14"
IMAGE_PLACEHOLDER = "[image]"


def _refuse(message: str) -> RequestError:
    return RequestError(400, message)


def chat_model(name: Any) -> Any:
    """DeepSeek's mapping of Claude names; any other name is left to the model check."""
    if not isinstance(name, str) or not name.lower().startswith("claude"):
        return name
    return "deepseek-v4-pro" if name.lower().startswith("claude-opus") else "deepseek-flash"


def _system(value: Any) -> list[ChatMessage]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "system", "content": value}] if value else []
    if not isinstance(value, list) or not all(_is_type(b, "text") for b in value):
        raise _refuse("system: expected a string or a list of text blocks")
    return [{"role": "system", "content": "".join(b.get("text") or "" for b in value)}]


def _is_type(block: Any, kind: str) -> bool:
    return isinstance(block, Mapping) and block.get("type") == kind


def _blocks(where: str, content: Any) -> list[Mapping[str, Any]]:
    """A turn's content as blocks, refusing the types DeepSeek does not support."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, Mapping) for b in content):
        raise _refuse(f"{where}.content: expected a string or a list of content blocks")
    for index, block in enumerate(content):
        kind = block.get("type")
        if kind in UNSUPPORTED_BLOCKS:
            raise _refuse(f"{where}.content.{index}: content block type `{kind}` is not supported")
    return content


def _tool_result(block: Mapping[str, Any]) -> ChatMessage:
    content = block.get("content")
    text = content if isinstance(content, str) else content_text(content)
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text}


def _check_image(where: str, block: Mapping[str, Any], beta: str) -> None:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind not in ("base64", "url", "file"):
        raise _refuse(f"{where}.source: expected a base64, url or file image source")
    if kind == "file" and FILES_BETA not in beta:
        raise _refuse(f"{where}: a file image needs the `anthropic-beta: {FILES_BETA}` header")


def _user(where: str, content: Any, beta: str) -> list[ChatMessage]:
    """A user turn: its tool results first (as tool messages), then its text."""
    results: list[ChatMessage] = []
    texts: list[str] = []
    for index, block in enumerate(_blocks(where, content)):
        kind = block.get("type")
        if kind == "tool_result":
            results.append(_tool_result(block))
        elif kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "image":
            _check_image(f"{where}.content.{index}", block, beta)
            texts.append(IMAGE_PLACEHOLDER)
        elif kind not in IGNORED_BLOCKS:
            raise _refuse(f"{where}.content.{index}: unknown content block type `{kind}`")
    if texts or not results:
        results.append({"role": "user", "content": "".join(texts)})
    return results


def _assistant(where: str, content: Any) -> ChatMessage:
    """An assistant turn: thinking -> reasoning_content, tool_use -> tool_calls."""
    message: ChatMessage = {"role": "assistant", "content": ""}
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(_blocks(where, content)):
        kind = block.get("type")
        if kind == "text":
            message["content"] += str(block.get("text") or "")
        elif kind == "thinking":
            thoughts.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": str(block.get("name")), "arguments": arguments}
            calls.append({"id": str(block.get("id")), "type": "function", "function": function})
        elif kind not in IGNORED_BLOCKS:
            raise _refuse(f"{where}.content.{index}: content block type `{kind}` is not allowed")
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(body: Mapping[str, Any], beta: str) -> list[ChatMessage]:
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _refuse("messages: expected a non-empty list of messages")
    out = _system(body.get("system"))
    for index, turn in enumerate(turns):
        where = f"messages.{index}"
        if not isinstance(turn, Mapping) or "content" not in turn:
            raise _refuse(f"{where}: expected an object with `role` and `content`")
        role = turn.get("role")
        if role == "user":
            out += _user(where, turn["content"], beta)
        elif role == "assistant":
            out.append(_assistant(where, turn["content"]))
        else:
            raise _refuse(f"{where}.role: expected `user` or `assistant`, got {role!r}")
    return out


def _tool(index: int, tool: Any) -> dict[str, Any] | None:
    """A client tool as a chat function; server tools (web search) are dropped."""
    if not isinstance(tool, Mapping):
        raise _refuse(f"tools.{index}: expected an object")
    kind = tool.get("type")
    if isinstance(kind, str) and kind.startswith("web_search"):
        return None
    if kind not in (None, "custom"):
        raise _refuse(f"tools.{index}: tool type `{kind}` is not supported")
    if not isinstance(tool.get("input_schema"), Mapping):
        raise _refuse(f"tools.{index}.input_schema: Field required")
    function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _refuse("tools: expected a list of tools")
    tools = [t for i, tool in enumerate(value) if (t := _tool(i, tool)) is not None]
    return tools or None


def _tool_choice(value: Any) -> Any:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    raise _refuse("tool_choice: expected auto, any, tool (with a name) or none")


def _thinking(value: Any) -> dict[str, str] | None:
    """`{"type": "enabled" | "disabled"}`; budget_tokens is ignored."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind not in ("enabled", "disabled"):
        raise _refuse("thinking.type: expected `enabled` or `disabled`")
    return {"type": kind}


def _optional_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The optional chat fields a Messages request sets (absent ones stay absent)."""
    metadata = body.get("metadata")
    output_config = body.get("output_config")
    fields = {
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "stop": body.get("stop_sequences"),
        "stream": body.get("stream"),
        "thinking": _thinking(body.get("thinking")),
        "tools": _tools(body.get("tools")),
        "tool_choice": _tool_choice(body.get("tool_choice")),
        "user_id": metadata.get("user_id") if isinstance(metadata, Mapping) else None,
        "reasoning_effort": (
            output_config.get("effort") if isinstance(output_config, Mapping) else None
        ),
    }
    return {name: value for name, value in fields.items() if value is not None}


def to_chat(body: Mapping[str, Any], headers: Mapping[str, str], *, count: bool) -> ChatMessage:
    """The chat body a Messages (or count_tokens, `count`) request stands for."""
    if not count and "max_tokens" not in body:
        raise _refuse("max_tokens: Field required")
    chat: dict[str, Any] = {
        "model": chat_model(body.get("model")),
        "messages": _messages(body, headers.get("anthropic-beta", "")),
        **_optional_fields(body),
    }
    if not count:
        chat["max_tokens"] = body["max_tokens"]
    return chat


def _check(chat: dict[str, Any], app: SimApp) -> None:
    """Chat's checks, worded for this surface (Anthropic has no 422: all are 400)."""
    try:
        checked(lambda: check_chat(chat, app.config, beta=False))
    except RequestError as exc:
        message = THINKING_PASSBACK if exc.message == PASSBACK else exc.message
        raise RequestError(400, message, exc.param) from None


def _translated(app: SimApp, request: Request, data: Any, *, count: bool) -> dict[str, Any]:
    chat = checked(lambda: to_chat(data, request.headers, count=count))
    _check(chat, app)
    return chat


def matched_stop(chat: Mapping[str, Any], seed: int) -> str | None:
    """The stop sequence that will end the reply (None when it ends on its own)."""
    stops = chat.get("stop")
    if not stops:
        return None
    reply = plan_chat(chat, seed)
    if reply.finish_reason != "stop" or reply.calls:
        return None
    stops = [stops] if isinstance(stops, str) else stops
    natural = "".join(plan_chat({**chat, "stop": None, "max_tokens": None}, seed).content)
    rest = natural[len("".join(reply.content)) :]
    return next((s for s in stops if s and rest.startswith(s)), None)


async def messages(app: SimApp, request: Request, send: Send) -> None:
    controls, data = await read_request(app, request, send)
    if data is None:
        return
    chat = _translated(app, request, data, count=False)
    encoder = MessageEncoder(chat["model"], matched_stop(chat, app.config.seed))
    await answer_chat(app, request, send, chat, controls, encoder)


async def count_tokens(app: SimApp, request: Request, send: Send) -> None:
    """`{"input_tokens": n}`: what `usage` will count for the same messages (no cache use)."""
    _, data = await read_request(app, request, send)
    if data is None:
        return
    chat = _translated(app, request, data, count=True)
    tokens = count_prompt(chat["messages"], chat.get("tools"), thinking=thinking_enabled(chat))
    await app.send_json(send, request, 200, orjson.dumps({"input_tokens": tokens}))
