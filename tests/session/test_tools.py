"""`@tool`: schemas from type hints and docstrings, and validation of the model's calls."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal

import pydantic
import pytest

from dskit import ToolError, ValidationError, tool
from dskit.client._types import ToolCall
from dskit.session._core import SessionCore
from dskit.session._tools import Tool, format_error, format_result, parse_docstring
from dskit.store import SessionRecord


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Place(pydantic.BaseModel):
    city: str
    country: str | None = None


@tool
def forecast(
    place: Place,
    days: int,
    unit: Unit = Unit.C,
    detail: Literal["short", "long"] = "short",
    hourly: bool = False,
    scale: float = 1.0,
    tags: list[str] | None = None,
    extra: dict[str, int] | None = None,
) -> str:
    """Forecast the weather somewhere.

    A second paragraph that is not part of the description.

    Args:
        place: Where to look.
        days: How many days ahead,
            counted from today.
        unit: Temperature unit.
    """
    return f"{place.city}:{days}:{unit.value}:{detail}:{hourly}:{scale}:{tags}:{extra}"


def test_schema_from_hints_and_docstring() -> None:
    assert isinstance(forecast, Tool)
    assert forecast.name == "forecast"
    assert forecast.description == "Forecast the weather somewhere."
    schema = forecast.parameters
    props = schema["properties"]
    assert schema["type"] == "object"
    assert schema["required"] == ["place", "days"]
    assert schema["additionalProperties"] is False
    assert props["days"] == {
        "type": "integer",
        "description": "How many days ahead, counted from today.",
    }
    assert props["detail"]["enum"] == ["short", "long"]
    assert props["hourly"]["type"] == "boolean" and props["scale"]["type"] == "number"
    assert props["tags"]["anyOf"][0] == {"type": "array", "items": {"type": "string"}}
    assert props["extra"]["anyOf"][0]["additionalProperties"] == {"type": "integer"}
    assert schema["$defs"]["Unit"]["enum"] == ["celsius", "fahrenheit"]
    assert schema["$defs"]["Place"]["required"] == ["city"]
    assert "title" not in json.dumps(schema).replace('"title":{', "")
    definition = forecast.definition()
    assert definition["type"] == "function"
    assert definition["function"]["name"] == "forecast"


def test_parse_builds_real_python_values() -> None:
    kwargs = forecast.parse('{"place": {"city": "Paris"}, "days": 2, "unit": "fahrenheit"}')
    assert kwargs["place"] == Place(city="Paris")
    assert kwargs["unit"] is Unit.F and kwargs["detail"] == "short"
    assert forecast(**kwargs) == "Paris:2:fahrenheit:short:False:1.0:None:None"


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ("{not json", "Invalid JSON"),
        ('{"days": 2}', "place: Field required"),
        ('{"place": {"city": "x"}, "days": "many"}', "days: Input should be a valid integer"),
        ('{"place": {"city": "x"}, "days": 1, "detail": "huge"}', "detail: Input should be"),
        ('{"place": {"city": "x"}, "days": 1, "bogus": 1}', "bogus: Extra inputs"),
        ("[1, 2]", "Input should be an object"),
    ],
)
def test_bad_arguments_are_a_tool_error_naming_the_problem(arguments: str, problem: str) -> None:
    with pytest.raises(ToolError, match="invalid arguments for forecast") as info:
        forecast.parse(arguments)
    assert problem in str(info.value)


def test_empty_arguments_mean_no_arguments() -> None:
    @tool
    def now() -> str:
        """The time."""
        return "noon"

    assert now.parse("") == {}
    assert now.parameters["properties"] == {}


def test_sphinx_docstrings_and_overrides() -> None:
    @tool(name="lookup-user", description="Find a user.")
    def find(user_id: int, model_name: str = "x") -> dict[str, Any]:
        """Ignored summary.

        :param user_id: The numeric id.
        :param str model_name: Shadowing-prone name.
        """
        return {"id": user_id}

    assert find.name == "lookup-user" and find.description == "Find a user."
    assert find.parameters["properties"]["user_id"]["description"] == "The numeric id."
    assert find.parse('{"user_id": 3}') == {"user_id": 3, "model_name": "x"}
    assert parse_docstring(None) == ("", {})


async def test_async_functions_are_tools() -> None:
    @tool
    async def slow(n: int) -> int:
        """Double it."""
        return n * 2

    assert slow.is_async and await slow(n=2) == 4


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: tool(lambda x: x), "invalid tool name"),
        (lambda: tool(name="has space")(lambda: 1), "invalid tool name"),
    ],
)
def test_bad_tools_are_refused_at_definition(make: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        make()


def test_untyped_and_star_parameters_are_refused() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> None:
        return None

    with pytest.raises(ValidationError, match="needs a type hint"):
        tool(untyped)
    with pytest.raises(ValidationError, match="must be named"):
        tool(star)


def test_results_and_errors_become_text() -> None:
    assert format_result("plain") == "plain"
    assert json.loads(format_result({"a": [1, Unit.C]})) == {"a": [1, "celsius"]}
    assert json.loads(format_result(Place(city="x"))) == {"city": "x", "country": None}
    assert json.loads(format_error(ValueError("boom"))) == {"error": "ValueError: boom"}
    assert json.loads(format_error(ToolError("no"))) == {"error": "no"}


def test_core_turns_bad_calls_into_error_results() -> None:
    core = SessionCore(SessionRecord(), tools=[forecast])
    unknown = core.resolve(ToolCall("c1", "teleport", "{}"))
    assert isinstance(unknown, str) and "no tool named 'teleport'" in unknown
    broken = core.resolve(ToolCall("c2", "forecast", '{"days": '))
    assert isinstance(broken, str) and "Invalid JSON" in broken
    found = core.resolve(ToolCall("c3", "forecast", '{"place": {"city": "Oslo"}, "days": 1}'))
    assert not isinstance(found, str) and found[0] is forecast


def test_duplicate_tool_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="two tools"):
        SessionCore(SessionRecord(), tools=[forecast, forecast])
