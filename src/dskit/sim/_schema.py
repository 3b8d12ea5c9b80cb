"""Tool-call arguments that validate against the tool's JSON Schema.

Values are drawn from the schema itself (types, enums, consts, required and optional
properties, nested objects and arrays, numeric and length bounds), so a client or session
that validates arguments against its schema accepts what the simulator sends.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from dskit._validate import is_integer, is_number

_WORDS = ("alpha", "beta", "gamma", "delta", "paris", "tokyo", "lima", "oslo", "blue", "green")
MAX_DEPTH = 6


def value_for(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A value valid against `schema` (best effort for exotic keywords)."""
    if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
        return rng.choice(_WORDS)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return value_for(options[0], rng, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {}
        for part in all_of:
            if isinstance(part, Mapping):
                merged.update(part)
        return value_for(merged, rng, depth + 1)
    return _by_type(schema, _type_of(schema), rng, depth)


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    return "array" if "items" in schema else "string"


def _by_type(schema: Mapping[str, Any], kind: str, rng: random.Random, depth: int) -> Any:
    if kind == "object":
        return _object(schema, rng, depth)
    if kind == "array":
        return _array(schema, rng, depth)
    if kind in ("integer", "number"):
        return _number(schema, rng, kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng)


def _object(schema: Mapping[str, Any], rng: random.Random, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    names = [n for n in properties if n in required or rng.random() < 0.5]
    names += [r for r in required if r not in properties]
    return {name: value_for(properties.get(name, {}), rng, depth + 1) for name in names}


def _array(schema: Mapping[str, Any], rng: random.Random, depth: int) -> list[Any]:
    low = _int(schema.get("minItems"), 1)
    high = max(low, _int(schema.get("maxItems"), low + 2))
    count = rng.randint(low, min(high, low + 3))
    return [value_for(schema.get("items", {}), rng, depth + 1) for _ in range(count)]


def _number(schema: Mapping[str, Any], rng: random.Random, integer: bool) -> int | float:
    low = _num(schema.get("minimum"), _num(schema.get("exclusiveMinimum"), -1) + 1)
    high = _num(schema.get("maximum"), _num(schema.get("exclusiveMaximum"), low + 101) - 1)
    high = max(low, high)
    if integer:
        return rng.randint(int(-(-low // 1)), max(int(-(-low // 1)), int(high // 1)))
    return round(rng.uniform(low, high), 2) if high > low else low


def _string(schema: Mapping[str, Any], rng: random.Random) -> str:
    low = _int(schema.get("minLength"), 0)
    high = _int(schema.get("maxLength"), max(low, 40))
    text = rng.choice(_WORDS)
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    return text[: max(low, min(high, len(text)))]


def _int(value: Any, default: int) -> int:
    ok = is_integer(value) and value >= 0
    return value if ok else default


def _num(value: Any, default: float) -> float:
    return value if is_number(value) else default
