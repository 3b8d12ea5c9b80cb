"""Packed questions: one JSON-mode request that asks for the answers to a numbered list.

A request is read as a pack when it is in JSON mode, its prompt asks for answers, and its
last user message holds a numbered list of questions, in any of these forms:

- JSON: a list of strings, or of objects with an integer and a string field (the number
  and the question), at the top or under one key (`{"questions": [{"i": 0, "question":
  "..."}]}`, `["...", "..."]`, `[{"n": 1, "text": "..."}]`);
- text: lines numbered one after another, from 0 or 1 (`1. ...`, `2) ...`, `Q3: ...`),
  two at least; unnumbered lines after one belong to it.

The shape of the reply is the first JSON template in the instructions (the system
prompt, or the user message's text around a text list), with `"..."` for an answer and
`, ...` for more entries: `{"answers": [{"i": 0, "answer": "..."}, ...]}`, `["...", ...]`,
`{"results": [{"n": 1, "text": "..."}]}`. Without one: `{"answers": ["...", ...]}`.

What the question would be asked alone: the conversation with the last user message
replaced by the question, and the instructions' paragraph that holds the template (or,
without a template, every paragraph of the system prompt that names JSON) taken out of
the system prompt. Pure: no I/O, no planning (`_plan` answers each question).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from dskit._tokens import content_text
from dskit._validate import is_integer

# X-Sim-Pack-Fault / SimConfig(pack_fault=...): how a pack's reply misbehaves
PACK_FAULTS = (
    "drop",  # the middle answer is left out
    "duplicate",  # the last entry carries the first one's number (or the first twice)
    "reverse",  # the entries in reverse order, numbered right (a valid reply)
    "ignore",  # the requested shape is not followed: JSON mode's usual object
)

_ASKS_ANSWERS = re.compile(r"\banswer", re.IGNORECASE)
_NUMBERED = re.compile(r"^\s*(?:q(?:uestion)?\s*)?(\d{1,4})\s*[.):\]]\s*(\S.*)$", re.IGNORECASE)
_INSTRUCTION = re.compile(r"\b(?:json|answer|answers|reply|respond)\b", re.IGNORECASE)
_ELISION = re.compile(r",\s*(?:\.\.\.|…)(?=\s*[\]}])")
_QUESTION_KEYS = ("question", "q", "text", "prompt", "content")
MAX_TEMPLATE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Shape:
    """Where the answers go: under `key` (None: a bare array), each an object with
    `number` and `answer` fields, or a bare string when `answer` is None."""

    key: str | None = "answers"
    number: str | None = None
    answer: str | None = None
    base: int = 0  # the template's first number (for questions that carry none)

    def entry(self, number: int, text: str) -> Any:
        if self.answer is None:
            return text
        return {self.number: number, self.answer: text} if self.number else {self.answer: text}

    def document(self, entries: list[Any]) -> Any:
        return entries if self.key is None else {self.key: entries}


@dataclass(frozen=True, slots=True)
class Pack:
    """A packed request read: the questions (with their numbers), the reply's shape,
    and the messages each question would be asked alone after."""

    numbers: tuple[int, ...]
    questions: tuple[str, ...]
    shape: Shape
    history: tuple[Mapping[str, Any], ...]

    def alone(self, question: str) -> list[Mapping[str, Any]]:
        return [*self.history, {"role": "user", "content": question}]

    def reply(self, answers: Sequence[str], fault: str | None) -> str:
        """The JSON reply with one answer per question, misbehaving as `fault` says
        ("ignore" is the caller's: it answers without the pack)."""
        entries = [self.shape.entry(n, a) for n, a in zip(self.numbers, answers, strict=True)]
        if fault == "drop":
            del entries[len(entries) // 2]
        elif fault == "duplicate":
            entries = _duplicate(entries, self.shape, self.numbers[0])
        elif fault == "reverse":
            entries.reverse()
        return orjson.dumps(self.shape.document(entries)).decode()


def _duplicate(entries: list[Any], shape: Shape, first: int) -> list[Any]:
    if shape.answer is None or shape.number is None or len(entries) < 2:
        return [*entries, entries[0]]
    return [*entries[:-1], {**entries[-1], shape.number: first}]


def read_pack(messages: Sequence[Mapping[str, Any]]) -> Pack | None:
    """The pack a JSON-mode request's messages ask, or None when they ask none."""
    last = len(messages) - 1
    if last < 0 or messages[last].get("role") != "user":
        return None
    text = content_text(messages[last].get("content"))
    listed = _json_questions(text) or _text_questions(text)
    if listed is None:
        return None
    numbered, around = listed
    systems = [content_text(m.get("content")) for m in messages if m.get("role") == "system"]
    if not _ASKS_ANSWERS.search(" ".join([*systems, around])):
        return None
    shape, holder = _find_shape([*systems, around])
    numbers = tuple(n if n is not None else shape.base + i for i, (n, _) in enumerate(numbered))
    if len(set(numbers)) != len(numbers):
        return None
    history = tuple(_without_instructions(m, holder) for m in messages[:last])
    kept = tuple(m for m in history if m.get("role") != "system" or m.get("content"))
    return Pack(numbers, tuple(q for _, q in numbered), shape, kept)


# ---- the questions ---------------------------------------------------------------------

Numbered = list[tuple[int | None, str]]


def _json_questions(text: str) -> tuple[Numbered, str] | None:
    """Questions listed as JSON: the whole message is the list (nothing around it)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    items = _the_list(data)
    if not items:
        return None
    numbered = [_question(item) for item in items]
    if any(q is None for _, q in numbered):
        return None
    return [(n, q) for n, q in numbered if q is not None], ""


def _the_list(data: Any) -> list[Any] | None:
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        lists = [value for value in data.values() if isinstance(value, list)]
        return lists[0] if len(lists) == 1 else None
    return None


def _question(item: Any) -> tuple[int | None, str | None]:
    if isinstance(item, str):
        return None, item if item.strip() else None
    if not isinstance(item, Mapping):
        return None, None
    number = next((v for v in item.values() if is_integer(v)), None)
    texts = {k: v for k, v in item.items() if isinstance(v, str) and v.strip()}
    named = [texts[k] for k in _QUESTION_KEYS if k in texts]
    question = named[0] if named else (max(texts.values(), key=len) if texts else None)
    return number, question


def _text_questions(text: str) -> tuple[Numbered, str] | None:
    """Questions as numbered lines, consecutive from 0 or 1; the rest is returned as the
    text around them (where instructions may be)."""
    numbers: list[int] = []
    questions: list[str] = []
    around: list[str] = []
    for line in text.splitlines():
        match = _NUMBERED.match(line)
        next_number = numbers[-1] + 1 if numbers else None
        if match and int(match.group(1)) in ((next_number,) if numbers else (0, 1)):
            numbers.append(int(match.group(1)))
            questions.append(match.group(2).strip())
        elif questions and line.strip() and not _is_instruction(line):
            questions[-1] = f"{questions[-1]}\n{line.strip()}"
        else:
            around.append(line)
    if len(questions) < 2:
        return None
    numbered: Numbered = [(n, q) for n, q in zip(numbers, questions, strict=True)]
    return numbered, "\n".join(around)


def _is_instruction(line: str) -> bool:
    """A line after the list that speaks about the reply rather than the question."""
    return bool(_INSTRUCTION.search(line))


# ---- the shape -------------------------------------------------------------------------


def _find_shape(texts: Sequence[str]) -> tuple[Shape, str | None]:
    """The first template's shape and the paragraph that holds it (None: no template)."""
    for text in texts:
        for paragraph in text.split("\n\n"):
            shape = _template_in(paragraph)
            if shape is not None:
                return shape, paragraph
    return Shape(), None


def _template_in(text: str) -> Shape | None:
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        end = _balanced_end(text, start)
        if end is None:
            continue
        try:
            data = orjson.loads(_ELISION.sub("", text[start:end]))
        except orjson.JSONDecodeError:
            continue
        shape = _shape_of(data)
        if shape is not None:
            return shape
    return None


def _balanced_end(text: str, start: int) -> int | None:
    """Where the bracket at `start` closes (strings respected), within the limit."""
    depth, in_string, escaped = 0, False, False
    for position in range(start, min(len(text), start + MAX_TEMPLATE_CHARS)):
        char = text[position]
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return position + 1
    return None


def _shape_of(data: Any) -> Shape | None:
    key: str | None = None
    if isinstance(data, Mapping):
        lists = [(k, v) for k, v in data.items() if isinstance(v, list)]
        if len(data) != 1 or not lists:
            return None
        key, data = lists[0]
    if not isinstance(data, list) or not data:
        return None
    first = data[0]
    if isinstance(first, str):
        return Shape(key)
    if not isinstance(first, Mapping):
        return None
    strings = [k for k, v in first.items() if isinstance(v, str)]
    numbers = [(k, v) for k, v in first.items() if is_integer(v)]
    if not strings:
        return None
    answer = next((k for k in strings if "answer" in k.lower()), strings[-1])
    number, base = numbers[0] if numbers else (None, 0)
    return Shape(key, number, answer, base)


def _without_instructions(message: Mapping[str, Any], holder: str | None) -> Mapping[str, Any]:
    """A system message with the pack's instructions taken out (other messages as they
    are)."""
    if message.get("role") != "system":
        return message
    paragraphs = content_text(message.get("content")).split("\n\n")
    if holder is not None:
        kept = [p for p in paragraphs if p != holder]
    else:
        kept = [p for p in paragraphs if not re.search(r"json", p, re.IGNORECASE)]
    return {**message, "content": "\n\n".join(kept)}
