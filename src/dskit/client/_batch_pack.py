"""Packing: several short, independent questions asked in one JSON-mode request.

The request asks for `{"answers": [{"i": 0, "answer": "..."}, ...]}`; `split_answers`
takes that apart and says None unless it is exactly one string answer per question (a
pack whose answer does not verify is asked again question by question). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from dskit._tokens import count_prompt
from dskit._validate import thinking_enabled
from dskit.client._core import ChatParams, chat_body
from dskit.client._types import Message, Usage

MAX_PACK = 64  # questions in one request, at most
MAX_QUESTION_CHARS = 1000  # a longer question is asked alone
JSON_MODE = {"type": "json_object"}
PACK_INSTRUCTIONS = (
    "Answer each of the numbered questions below on its own, as if it were asked alone. "
    'Reply with one json object and nothing else: {"answers": [{"i": 0, "answer": "..."}, '
    "...]}, one entry per question, where i is the question's number and answer is a string."
)


def pack_messages(questions: Sequence[str], system: str | None) -> list[Message]:
    """The messages of one packed request (the word "json" is in the system prompt, as
    JSON mode requires)."""
    instructions = f"{system}\n\n{PACK_INSTRUCTIONS}" if system else PACK_INSTRUCTIONS
    numbered = [{"i": i, "question": q} for i, q in enumerate(questions)]
    user = orjson.dumps({"questions": numbered}).decode()
    return [{"role": "system", "content": instructions}, {"role": "user", "content": user}]


def split_answers(content: str, count: int) -> list[str] | None:
    """The answers in question order, or None when `content` is not exactly `count` string
    answers numbered 0..count-1 (each once) under `answers`."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    answers = data.get("answers") if isinstance(data, Mapping) else None
    if not isinstance(answers, list) or len(answers) != count:
        return None
    found: dict[int, str] = {}
    for item in answers:
        number, text = _entry(item)
        if number is None or text is None or number in found or not 0 <= number < count:
            return None
        found[number] = text
    return [found[i] for i in range(count)]


def _entry(item: Any) -> tuple[int | None, str | None]:
    if not isinstance(item, Mapping):
        return None, None
    number, text = item.get("i"), item.get("answer")
    valid_number = isinstance(number, int) and not isinstance(number, bool)
    return (number if valid_number else None), (text if isinstance(text, str) else None)


def packable(question: str) -> bool:
    return 0 < len(question) <= MAX_QUESTION_CHARS


def prompt_tokens(messages: Sequence[Message], params: ChatParams) -> int:
    """The estimated prompt tokens of a request sent with `params` (`dskit._tokens`): its
    thinking mode (the generation prompt differs by 26 tokens) and tools count too."""
    body = chat_body(messages, params)
    return count_prompt(body["messages"], body.get("tools"), thinking=thinking_enabled(body))


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers that add up to it (the first ones larger)."""
    whole, rest = divmod(total, parts)
    return [whole + (1 if i < rest else 0) for i in range(parts)]


def share_usage(usage: Usage | None, parts: int) -> list[Usage | None]:
    """One pack's usage split evenly over its questions, so the sums stay exact."""
    if usage is None:
        return [None] * parts
    columns = [
        shares(usage.prompt_tokens, parts),
        shares(usage.completion_tokens, parts),
        shares(usage.total_tokens, parts),
        shares(usage.prompt_cache_hit_tokens, parts),
        shares(usage.prompt_cache_miss_tokens, parts),
        shares(usage.reasoning_tokens, parts),
    ]
    return [Usage(*(column[i] for column in columns)) for i in range(parts)]
