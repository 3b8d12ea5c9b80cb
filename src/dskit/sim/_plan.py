"""What the simulated model answers: a pure function of the request.

The reply is planned in full before the first byte is sent (reasoning pieces, content
pieces, tool calls, finish reason); streaming and non-streaming responses render the same
plan, and Chat Prefix Completion continues exactly the reply the same request without the
prefix message would get, which is what lets a client resume a broken stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from dskit._tokens import content_text
from dskit._validate import effort_of, thinking_enabled
from dskit.sim._pack import read_pack
from dskit.sim._schema import value_for
from dskit.sim._text import (
    apply_stop,
    cut_chars,
    digest,
    generate,
    is_mostly_cjk,
    rng_for,
    token_pieces,
)
from dskit.sim._text import split_pieces as pieces_of
from dskit.sim._tools import Hints, choose_tools

MAX_QUOTE = 4000


@dataclass(slots=True)
class PlannedCall:
    """One tool call: its full arguments and the fragments they stream in."""

    id: str
    name: str
    arguments: str
    fragments: list[str]


@dataclass(slots=True)
class Reply:
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    calls: list[PlannedCall] = field(default_factory=list)
    finish_reason: str = "stop"
    packed: int = 0  # questions answered in one packed reply (`_pack`)

    @property
    def completion_tokens(self) -> int:
        calls = sum(1 + len(call.fragments) for call in self.calls)
        return len(self.reasoning) + len(self.content) + calls


def is_prefix_message(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "assistant" and bool(message.get("prefix"))


def _stops(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop or () if isinstance(s, str)]


def plan_chat(body: Mapping[str, Any], config_seed: int, pack_fault: str | None = None) -> Reply:
    """The reply to a validated chat request (prefix completion included); `pack_fault`
    makes a packed reply misbehave (`_pack.PACK_FAULTS`)."""
    messages: list[Mapping[str, Any]] = body["messages"]
    prefix = messages[-1] if is_prefix_message(messages[-1]) else None
    base = messages[:-1] if prefix is not None else messages
    seed = _seed(body, base, config_seed)
    chinese = is_mostly_cjk(_last_user_text(base))
    stops = _stops(body)
    reply = _packed(body, base, config_seed, pack_fault) or _natural(body, base, seed, chinese)
    reply.content = apply_stop(reply.content, stops)
    if prefix is not None:
        reply = _continue(reply, prefix, seed, stops, chinese)
    return _limit(reply, body.get("max_tokens"))


def _seed(body: Mapping[str, Any], base: Sequence[Mapping[str, Any]], config_seed: int) -> bytes:
    knobs = [body.get(k) for k in ("temperature", "top_p", "frequency_penalty", "presence_penalty")]
    return digest(body["model"], base, knobs, config_seed)


# what a packed request sets for the pack as a whole, not for each question in it
PACK_ONLY = ("response_format", "max_tokens", "stop", "messages")


def _packed(
    body: Mapping[str, Any], base: Sequence[Mapping[str, Any]], config_seed: int, fault: str | None
) -> Reply | None:
    """A packed request's reply: JSON in the requested shape, each answer (and its
    reasoning) what the question gets asked alone; None when the request is not a pack."""
    fmt = body.get("response_format")
    json_mode = isinstance(fmt, Mapping) and fmt.get("type") == "json_object"
    if not json_mode or fault == "ignore" or body.get("tools"):
        return None
    pack = read_pack(base)
    if pack is None:
        return None
    alone = {k: v for k, v in body.items() if k not in PACK_ONLY}
    replies = []
    for question in pack.questions:
        messages = pack.alone(question)
        seed = _seed(alone, messages, config_seed)
        replies.append(_natural(alone, messages, seed, is_mostly_cjk(question)))
    reasoning = [piece for r in replies for piece in ("\n\n", *r.reasoning) if r.reasoning]
    content = pack.reply(["".join(r.content) for r in replies], fault)
    return Reply(reasoning[1:], token_pieces(content), packed=len(replies))


def plan_fim(body: Mapping[str, Any], config_seed: int) -> Reply:
    """The middle for a FIM request: deterministic in prompt, suffix and sampling knobs."""
    prompt, suffix = body["prompt"], body.get("suffix") or ""
    seed = digest("fim", body["model"], prompt, suffix, body.get("temperature"), config_seed)
    rng = rng_for(seed, "fim")
    pieces = generate(rng, rng.randint(10, 60), is_mostly_cjk(prompt))
    pieces = apply_stop(pieces, _stops(body))
    return _limit(Reply(content=pieces), body.get("max_tokens"))


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


# how long the simulated reasoning runs, in words, by effort (documented in docs/simulator.md)
REASONING_WORDS = {"low": (10, 40), "high": (30, 150), "max": (120, 300)}


def _natural(
    body: Mapping[str, Any], base: Sequence[Mapping[str, Any]], seed: bytes, chinese: bool
) -> Reply:
    reasoning: list[str] = []
    if thinking_enabled(body):
        rng = rng_for(seed, "reasoning")
        low, high = REASONING_WORDS[effort_of(body) or "high"]
        reasoning = generate(rng, rng.randint(low, high), chinese)
    fmt = body.get("response_format")
    schema_answer = _schema_answer(fmt, seed)
    if base and base[-1].get("role") == "tool":
        return Reply(reasoning, schema_answer or _quote_results(base, seed, chinese))
    calls = _plan_calls(body, base, seed)
    if calls:
        return Reply(reasoning, [], calls, "tool_calls")
    if schema_answer:
        return Reply(reasoning, schema_answer)
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        return Reply(reasoning, _json_object(seed, chinese))
    rng = rng_for(seed, "content")
    return Reply(reasoning, generate(rng, rng.randint(20, 120), chinese))


def _schema_answer(fmt: Any, seed: bytes) -> list[str]:
    """For `{"type": "json_schema", "json_schema": {"schema": ...}}` (the Responses API's
    `text.format`; chat refuses it at validation): JSON valid against the schema."""
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        return []
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    value = value_for(schema if schema is not None else {"type": "object"}, rng_for(seed, "schema"))
    return pieces_of(orjson.dumps(value).decode())


def _json_object(seed: bytes, chinese: bool) -> list[str]:
    rng = rng_for(seed, "json")
    answer = "".join(generate(rng, rng.randint(8, 30), chinese))
    tags = ["".join(generate(rng, 1, chinese)[:1]).strip(" .?!。？！") for _ in range(3)]
    data = {"answer": answer, "score": rng.randint(0, 100), "tags": tags, "done": True}
    return pieces_of(orjson.dumps(data).decode())


def _quote_results(base: Sequence[Mapping[str, Any]], seed: bytes, chinese: bool) -> list[str]:
    """An answer that uses the trailing tool results: it quotes each of them."""
    names = _call_names(base)
    results: list[Mapping[str, Any]] = []
    for message in reversed(base):
        if message.get("role") != "tool":
            break
        results.insert(0, message)
    lines = []
    for result in results:
        name = names.get(str(result.get("tool_call_id")), "the tool")
        quoted = content_text(result.get("content"))[:MAX_QUOTE]
        lines.append(f"{name} returned: {quoted}" if not chinese else f"{name} 返回：{quoted}")
    rng = rng_for(seed, "after-tools")
    text = ("。" if chinese else ". ").join(lines) + ("。" if chinese else ".")
    tail = generate(rng, 12, chinese)
    if not chinese:
        tail[0] = " " + tail[0]
    return pieces_of(text) + tail


def _call_names(messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                names[str(call.get("id"))] = str(call["function"].get("name"))
    return names


def _plan_calls(
    body: Mapping[str, Any], base: Sequence[Mapping[str, Any]], seed: bytes
) -> list[PlannedCall]:
    tools: list[Mapping[str, Any]] = body.get("tools") or []
    choice = body.get("tool_choice") or "auto"
    if not tools or choice == "none":
        return []
    text = _last_user_text(base)
    if isinstance(choice, Mapping):
        chosen = [t for t in tools if t["function"]["name"] == choice["function"]["name"]][:1]
    else:
        chosen = choose_tools(tools, text)
        if not chosen and choice == "required":
            chosen = tools[:1]
    rng = rng_for(seed, "tools")
    hints = Hints.of(text)
    return [_call(tool["function"], index, rng, hints) for index, tool in enumerate(chosen)]


def _call(function: Mapping[str, Any], index: int, rng: Any, hints: Hints) -> PlannedCall:
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    value = hints.fill(schema, value_for(schema, rng))
    arguments = orjson.dumps(value if isinstance(value, dict) else {}).decode()
    fragments = []
    position = 0
    while position < len(arguments):
        step = rng.randint(3, 9)
        fragments.append(arguments[position : position + step])
        position += step
    call_id = f"call_{index}_{uuid.UUID(int=rng.getrandbits(128), version=4)}"
    return PlannedCall(call_id, str(function["name"]), arguments, fragments)


def _continue(
    full: Reply, prefix: Mapping[str, Any], seed: bytes, stops: list[str], chinese: bool
) -> Reply:
    """Chat Prefix Completion: continue the prefix, exactly along `full` when it can."""
    text = content_text(prefix.get("content"))
    thought = prefix.get("reasoning_content")
    if not text:
        if not isinstance(thought, str) or not full.reasoning:
            return full
        if "".join(full.reasoning).startswith(thought):
            reasoning = cut_chars(full.reasoning, len(thought))
        else:
            reasoning = _derived(seed, thought, [], chinese)
        return Reply(reasoning, full.content, full.calls, full.finish_reason, full.packed)
    if not full.calls and "".join(full.content).startswith(text):
        return Reply([], cut_chars(full.content, len(text)), [], full.finish_reason, full.packed)
    return Reply([], _derived(seed, text, stops, chinese))


def _derived(seed: bytes, text: str, stops: list[str], chinese: bool) -> list[str]:
    """A deterministic continuation of text the simulator would not have written."""
    rng = rng_for(seed + digest(text), "continuation")
    pieces = generate(rng, rng.randint(10, 60), chinese)
    if not chinese and not text[-1:].isspace():
        pieces[0] = " " + pieces[0]
    return apply_stop(pieces, stops)


def _limit(reply: Reply, max_tokens: Any) -> Reply:
    """Cut the reply at `max_tokens` pieces (reasoning first), finish_reason `length`."""
    if not isinstance(max_tokens, int) or reply.completion_tokens <= max_tokens:
        return reply
    return truncate(reply, max_tokens, "length")


def truncate(reply: Reply, budget: int, finish_reason: str) -> Reply:
    """The first `budget` pieces of a reply (reasoning, content, call fragments)."""
    reasoning = reply.reasoning[:budget]
    budget -= len(reasoning)
    content = reply.content[:budget]
    budget -= len(content)
    calls = []
    for call in reply.calls:
        if budget <= 0:
            break
        fragments = call.fragments[: budget - 1]
        calls.append(PlannedCall(call.id, call.name, "".join(fragments), fragments))
        budget -= 1 + len(fragments)
    return Reply(reasoning, content, calls, finish_reason, reply.packed)
