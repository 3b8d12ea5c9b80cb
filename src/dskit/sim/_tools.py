"""Which tool the simulated model calls, and with what: the way a model plausibly would.

A tool the message names (`get_weather`, or "get weather") is called, several in the
order they are named. Otherwise the tool whose name and description share the most
words with the message is called (name words count double; ties go to the first
offered), and none when no word is shared. Arguments satisfy the tool's JSON Schema;
string properties take the message's proper nouns and quoted phrases in order, number
properties its numbers (within the schema's bounds), so "weather in Lisbon for 3 days"
becomes `{"city": "Lisbon", "days": 3}`. Everything is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dskit._validate import is_number

STOPWORDS = frozenset({
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "what", "whats",
    "is", "are", "was", "be", "it", "its", "this", "that", "how", "do", "does", "can", "could",
    "would", "you", "your", "me", "my", "i", "please", "tell", "about", "from", "at", "by",
    "get", "set", "some", "any", "give", "show", "find", "use", "call", "tool", "function",
})  # fmt: skip
WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")
QUOTED = re.compile(r"\"([^\"]{1,80})\"|'([^']{1,80})'|“([^”]{1,80})”")
PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+(?:\s[A-Z][a-z]+)*)")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
NAME_WEIGHT = 2


def words(text: str) -> set[str]:
    """The meaningful words of a text, lower-cased, plural `s` dropped (`get_weather`
    and `getWeather` give {"weather"})."""
    found = set()
    for word in WORD.findall(text.replace("_", " ")):
        lowered = word.lower()
        if len(lowered) < 3 or lowered in STOPWORDS:
            continue
        found.add(lowered[:-1] if len(lowered) > 3 and lowered.endswith("s") else lowered)
    return found


def choose_tools(tools: Sequence[Mapping[str, Any]], text: str) -> list[Mapping[str, Any]]:
    """The tools to call for `text` (see the module's docstring); [] for a plain answer."""
    named = _named(tools, text)
    if named:
        return named
    asked = words(text)
    best: tuple[int, Mapping[str, Any] | None] = (0, None)
    for tool in tools:
        function = tool["function"]
        name_words = words(str(function["name"]))
        description = words(str(function.get("description") or ""))
        score = NAME_WEIGHT * len(asked & name_words) + len(asked & (description - name_words))
        if score > best[0]:
            best = (score, tool)
    return [best[1]] if best[1] is not None else []


def _named(tools: Sequence[Mapping[str, Any]], text: str) -> list[Mapping[str, Any]]:
    """The tools whose names the text mentions, in the order it mentions them."""
    lowered = text.lower()
    found = []
    for tool in tools:
        name = str(tool["function"]["name"]).lower()
        spaced = name.replace("_", " ")
        positions = [p for p in (lowered.find(name), lowered.find(spaced)) if p >= 0]
        if positions:
            found.append((min(positions), tool))
    return [tool for _, tool in sorted(found, key=lambda pair: pair[0])]


@dataclass(slots=True)
class Hints:
    """Values taken from the message for a call's arguments, each used once."""

    strings: list[str] = field(default_factory=list)
    numbers: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, text: str) -> Hints:
        quoted = [next(g for g in m.groups() if g) for m in QUOTED.finditer(text)]
        unquoted = QUOTED.sub(" ", text)
        proper = [p for p in PROPER.findall(unquoted) if p.lower() not in STOPWORDS]
        numbers = [float(n) for n in NUMBER.findall(unquoted)]
        return cls(quoted + proper, numbers)

    def fill(self, schema: Mapping[str, Any], value: Any) -> Any:
        """`value` (valid against the object `schema`) with its free-form top-level
        strings and numbers replaced by the message's, where they fit."""
        properties = schema.get("properties")
        if not isinstance(value, dict) or not isinstance(properties, Mapping):
            return value
        filled = dict(value)
        for name, sub in properties.items():
            if name in filled and isinstance(sub, Mapping):
                filled[name] = self._one(sub, filled[name])
        return filled

    def _one(self, schema: Mapping[str, Any], current: Any) -> Any:
        if any(k in schema for k in ("enum", "const", "pattern", "format")):
            return current
        kind = schema.get("type")
        if kind == "string" and self.strings:
            text = self.strings[0]
            if _fits_length(schema, text):
                return self.strings.pop(0)
        if kind in ("integer", "number") and self.numbers:
            number = self.numbers[0]
            if (kind == "number" or number.is_integer()) and _in_bounds(schema, number):
                self.numbers.pop(0)
                return int(number) if kind == "integer" else number
        return current


def _fits_length(schema: Mapping[str, Any], text: str) -> bool:
    low, high = schema.get("minLength"), schema.get("maxLength")
    return (not is_number(low) or len(text) >= low) and (not is_number(high) or len(text) <= high)


def _in_bounds(schema: Mapping[str, Any], number: float) -> bool:
    def bound(key: str) -> float | None:
        value = schema.get(key)
        return float(value) if is_number(value) else None

    low, high = bound("minimum"), bound("maximum")
    above, below = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    return (
        (low is None or number >= low) and (high is None or number <= high)
        and (above is None or number > above) and (below is None or number < below)
    )  # fmt: skip
