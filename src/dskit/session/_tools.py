"""`@tool`: a Python function the model may call, its JSON schema built from its signature.

The schema comes from the type hints (str, int, float, bool, Literal, Enum, list, dict,
Optional, pydantic models: anything pydantic can describe) and the docstring (its first
paragraph describes the tool; an `Args:` section or `:param x:` lines describe the
parameters). The same pydantic model validates what the model sends back, so a call with
broken JSON or arguments that do not fit the schema becomes an error result the model can
read and correct, never an exception in the caller's program.
"""

from __future__ import annotations

import inspect
import re
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, overload

import pydantic
import pydantic_core

from dskit._validate import TOOL_NAME
from dskit.client._errors import ToolError, ValidationError

_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns?|Raises|Yields|Examples?):\s*$")
_GOOGLE_PARAM = re.compile(r"^\s+(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
MAX_ERROR = 2000


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (first paragraph) and per-parameter texts of a docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line) or line.lstrip().startswith(":"):
            break
        summary.append(line.strip())
    return " ".join(summary), _param_docs(lines)


def _param_docs(lines: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    section, last = "", ""
    for line in lines:
        if match := _SECTION.match(line):
            section, last = match.group(1), ""
        elif match := _SPHINX_PARAM.match(line):
            last = match.group(1)
            params[last] = match.group(2).strip()
        elif section in ("Args", "Arguments", "Parameters") and (m := _GOOGLE_PARAM.match(line)):
            last = m.group(1)
            params[last] = m.group(2).strip()
        elif last and line.startswith((" ", "\t")) and line.strip():
            params[last] = f"{params[last]} {line.strip()}".strip()
    return params


def _strip_titles(schema: Any) -> Any:
    """pydantic titles every schema; the API needs none of them (they cost tokens)."""
    if isinstance(schema, dict):
        return {
            k: _strip_titles(v)
            for k, v in schema.items()
            if not (k == "title" and isinstance(v, str))
        }
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def _arguments_model(fn: Callable[..., Any], name: str, docs: Mapping[str, str]) -> type[Any]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ValidationError(f"tool {name!r}: parameter {param.name!r} must be named")
        if param.name not in hints:
            raise ValidationError(f"tool {name!r}: parameter {param.name!r} needs a type hint")
        default = ... if param.default is param.empty else param.default
        info = pydantic.Field(default, description=docs.get(param.name))
        fields[param.name] = (hints[param.name], info)
    config = pydantic.ConfigDict(extra="forbid", protected_namespaces=())
    try:
        with warnings.catch_warnings():  # a parameter may shadow a BaseModel attribute
            warnings.simplefilter("ignore")
            model: type[Any] = pydantic.create_model(
                f"{name}_arguments", __config__=config, **fields
            )
        return model
    except (pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ValidationError(f"tool {name!r}: cannot describe its parameters: {exc}") from None


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; calling the Tool calls the function."""

    fn: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    arguments_model: type[Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def definition(self) -> dict[str, Any]:
        """The `tools` entry sent to the API."""
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}

    def parse(self, arguments: str) -> dict[str, Any]:
        """Keyword arguments from the model's JSON text; ToolError when they do not fit."""
        try:
            parsed = self.arguments_model.model_validate_json(arguments.strip() or "{}")
        except pydantic.ValidationError as exc:
            raise ToolError(f"invalid arguments for {self.name}: {_brief(exc)}") from None
        return dict(parsed)


def _brief(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def make_tool(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> Tool:
    tool_name = str(name or getattr(fn, "__name__", ""))
    if not TOOL_NAME.match(tool_name):
        raise ValidationError(
            f"invalid tool name {tool_name!r}: use [a-zA-Z0-9_-], 1 to 64 characters"
        )
    summary, docs = parse_docstring(inspect.getdoc(fn))
    model = _arguments_model(fn, tool_name, docs)
    schema = _strip_titles(model.model_json_schema())
    return Tool(fn, tool_name, description or summary, schema, model)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[..., Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[..., Tool]:
    """Make a function callable by the model: `@tool` or `@tool(name=..., description=...)`."""
    if fn is not None:
        return make_tool(fn, name=name, description=description)
    return lambda f: make_tool(f, name=name, description=description)


def tool_table(tools: Iterable[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    """Tools by name; plain functions are wrapped; duplicate names are refused."""
    table: dict[str, Tool] = {}
    for item in tools:
        made = item if isinstance(item, Tool) else make_tool(item)
        if made.name in table:
            raise ValidationError(f"two tools are named {made.name!r}")
        table[made.name] = made
    return table


def format_result(value: Any) -> str:
    """A tool's return value as the text of a tool message."""
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value, fallback=str).decode()


def format_error(exc: BaseException) -> str:
    """A failure as the text of a tool message: the model reads it and can try again."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, ToolError):
        text = f"{type(exc).__name__}: {text}"
    return pydantic_core.to_json({"error": text[:MAX_ERROR]}).decode()
