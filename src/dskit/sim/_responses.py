"""OpenAI Responses (`POST /responses`, `/v1/responses`) onto the chat planning.

Stateless, like DeepSeek's: the request is translated into the chat body the simulator
already checks and plans, following DeepSeek's compatibility table (docs/simulator.md):

- supported: model, input (a string, or message / function_call / function_call_output /
  reasoning items), instructions (the first system message), stream, temperature, top_p,
  max_output_tokens (reasoning counts inside it), top_logprobs (0-20, none generated),
  function tools, tool_choice, reasoning.effort (`none` turns thinking off),
  text.format text / json_object / json_schema (the answer is JSON valid against the
  schema, deterministic), user;
- ignored: store (always false), metadata, include, prompt, truncation, service_tier,
  safety_identifier, prompt_cache_key, prompt_cache_retention, context_management,
  stream_options, parallel_tool_calls, max_tool_calls, reasoning.summary,
  text.verbosity, built-in tools (web_search, file_search, code_interpreter,
  computer_use, mcp, ...: none is simulated), the custom tool apply_patch, input items of
  other types (web_search_call, custom tool calls, item_reference, ...);
- refused (400): previous_response_id and conversation (nothing is stored, so they
  could not be honoured), background: true, custom tools other than apply_patch,
  images outside user/developer messages, input_image without exactly one of
  image_url / file_id, neither input nor instructions, and whatever chat refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dskit._tokens import content_text
from dskit.sim._completions import answer_chat, checked, read_request
from dskit.sim._request import RequestError, check_chat
from dskit.sim._responses_wire import ResponseEncoder

if TYPE_CHECKING:
    from dskit.sim._app import Request, SimApp
    from dskit.sim._stream import Send

ChatMessage = dict[str, Any]
REFUSED = ("previous_response_id", "conversation")
# built-in tool types (by prefix) accepted and ignored: none of them is simulated
IGNORED_TOOLS = (
    "web_search",
    "file_search",
    "code_interpreter",
    "computer",
    "mcp",
    "image_generation",
    "local_shell",
)
IMAGE_PLACEHOLDER = "[image]"
ECHOED = ("instructions", "max_output_tokens", "model", "temperature", "top_p", "user")


def _refuse(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param)


def _image(where: str, part: Mapping[str, Any]) -> str:
    has_url, has_file = part.get("image_url") is not None, part.get("file_id") is not None
    if has_url and has_file:
        raise _refuse("input_image cannot have both image_url and file_id", where)
    if not (has_url or has_file):
        raise _refuse("input_image must have image_url or file_id", where)
    return IMAGE_PLACEHOLDER


def _text(where: str, content: Any, images: bool) -> str:
    """A message's (or tool output's) text; images allowed only where `images` says."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _refuse(f"{where}.content: expected a string or a list of parts", where)
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "input_image":
            if not images:
                raise _refuse(f"{where}.content[{index}]: images are only allowed in user input")
            texts.append(_image(f"{where}.content[{index}]", part))
        elif kind in ("input_text", "output_text", "text"):
            texts.append(str(part.get("text") or ""))
    return "".join(texts)


class _Conversation:
    """Input items folded into chat messages (reasoning joins the next assistant turn)."""

    def __init__(self, instructions: Any) -> None:
        self.messages: list[ChatMessage] = []
        self.reasoning: str | None = None
        if instructions:
            self.messages.append({"role": "system", "content": str(instructions)})

    def add(self, index: int, item: Any) -> None:
        where = f"input[{index}]"
        if not isinstance(item, Mapping):
            raise _refuse(f"{where}: expected an input item object", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            self._message(where, item)
        elif kind == "function_call":
            self._call(item)
        elif kind == "function_call_output":
            output = _text(where, item.get("output"), images=True)
            call_id = str(item.get("call_id"))
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            self.reasoning = (self.reasoning or "") + content_text(item.get("content"))

    def _message(self, where: str, item: Mapping[str, Any]) -> None:
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _refuse(f"{where}.role: expected user, assistant, system or developer", where)
        images = role in ("user", "developer")
        text = _text(where, item.get("content"), images)
        if role == "assistant":
            self._assistant()["content"] += text
            return
        self.messages.append({"role": "user" if role == "developer" else role, "content": text})

    def _assistant(self) -> ChatMessage:
        """The assistant turn being built (a new one unless the last message is one)."""
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant" or self.reasoning is not None:
            last = {"role": "assistant", "content": ""}
            self.messages.append(last)
        if self.reasoning is not None:
            last["reasoning_content"] = self.reasoning
            self.reasoning = None
        return last

    def _call(self, item: Mapping[str, Any]) -> None:
        function = {"name": str(item.get("name")), "arguments": str(item.get("arguments") or "")}
        call = {"id": str(item.get("call_id")), "type": "function", "function": function}
        self._assistant().setdefault("tool_calls", []).append(call)


def _messages(body: Mapping[str, Any]) -> list[ChatMessage]:
    source, instructions = body.get("input"), body.get("instructions")
    if not source and not instructions:
        raise _refuse("Either input or instructions is required", "input")
    conversation = _Conversation(instructions)
    if isinstance(source, str):
        conversation.messages.append({"role": "user", "content": source})
    elif isinstance(source, list):
        for index, item in enumerate(source):
            conversation.add(index, item)
    elif source is not None:
        raise _refuse("input: expected a string or a list of input items", "input")
    return conversation.messages


def _tool(index: int, tool: Any) -> dict[str, Any] | None:
    kind = tool.get("type") if isinstance(tool, Mapping) else None
    if kind == "function":
        function = {"name": tool.get("name"), "parameters": tool.get("parameters")}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        return {"type": "function", "function": function}
    if kind == "custom":
        if tool.get("name") != "apply_patch":
            raise _refuse("custom tools: only apply_patch is supported", f"tools[{index}]")
        return None
    if isinstance(kind, str) and kind.startswith(IGNORED_TOOLS):
        return None
    raise _refuse(f"tools[{index}]: unsupported tool type {kind!r}", f"tools[{index}]")


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _refuse("tools: expected a list of tools", "tools")
    tools = [t for i, tool in enumerate(value) if (t := _tool(i, tool)) is not None]
    return tools or None


def _tool_choice(value: Any) -> Any:
    if value is None or value in ("none", "auto", "required"):
        return value
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    if kind == "web_search":
        return "auto"  # web search is not simulated: the model may answer or call a function
    raise _refuse("tool_choice: expected none, auto, required or a function", "tool_choice")


def _thinking(reasoning: Any) -> dict[str, Any]:
    effort = reasoning.get("effort") if isinstance(reasoning, Mapping) else None
    if effort == "none":
        return {"thinking": {"type": "disabled"}}
    return {} if effort is None else {"reasoning_effort": effort}


def _format(text: Any) -> dict[str, Any] | None:
    """text.format as chat's response_format (json_schema is planned, never checked)."""
    fmt = text.get("format") if isinstance(text, Mapping) else None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), Mapping):
        spec = {"name": fmt.get("name"), "schema": fmt["schema"], "strict": fmt.get("strict")}
        return {"type": "json_schema", "json_schema": spec}
    raise _refuse("text.format: expected text, json_object or json_schema with a schema")


def _refusals(body: Mapping[str, Any]) -> None:
    for name in REFUSED:
        if body.get(name) is not None:
            raise _refuse(f"{name} is not supported: the Responses API is stateless", name)
    if body.get("background"):
        raise _refuse("background is not supported", "background")


def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat body a Responses request stands for."""
    _refusals(body)
    fields = {
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "top_logprobs": body.get("top_logprobs"),
        "max_tokens": body.get("max_output_tokens"),
        "stream": body.get("stream"),
        "tools": _tools(body.get("tools")),
        "tool_choice": _tool_choice(body.get("tool_choice")),
        "response_format": _format(body.get("text")),
    }
    chat = {
        "model": body.get("model"),
        "messages": _messages(body),
        **_thinking(body.get("reasoning")),
    }
    return {**chat, **{name: value for name, value in fields.items() if value is not None}}


def _check(chat: Mapping[str, Any], app: SimApp) -> None:
    """Chat's checks; a json_schema format is the planner's business, not chat's."""
    fmt = chat.get("response_format")
    checked_body = {**chat}
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        del checked_body["response_format"]
    checked(lambda: check_chat(checked_body, app.config, beta=False))


def echo(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields a response repeats, with the defaults the API shows."""
    fields = {name: body.get(name) for name in ECHOED}
    reasoning = body.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, Mapping) else {}
    return {
        **fields,
        "metadata": body.get("metadata") or {},
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "truncation": "disabled",
    }


async def responses(app: SimApp, request: Request, send: Send) -> None:
    controls, data = await read_request(app, request, send)
    if data is None:
        return
    chat = checked(lambda: to_chat(data))
    _check(chat, app)
    encoder = checked(lambda: ResponseEncoder(echo(data)))
    await answer_chat(app, request, send, chat, controls, encoder)
