"""The simulated model calls tools as a model plausibly would: the best-matching tool,
with arguments that fit its schema and come from the message; then it uses the results."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from dskit import ChatSession, DeepSeek, tool
from dskit.sim._tools import Hints, choose_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "days", "unit"],
        },
    },
}
ORDERS = {
    "type": "function",
    "function": {"name": "lookup_order", "description": "Find a customer's order by its id."},
}
TOOLS = [WEATHER, ORDERS]


@pytest.mark.parametrize(
    ("message", "called"),
    [
        ("What's the weather in Lisbon?", ["get_weather"]),  # a word of the name
        ("Will it rain? I need the forecast for Porto", ["get_weather"]),  # the description
        ("Where is my order A-17?", ["lookup_order"]),
        ("call lookup_order, then get_weather", ["lookup_order", "get_weather"]),  # named
        ("hi there, how are you?", []),  # nothing in common: a plain answer
    ],
)
def test_the_best_matching_tool_is_chosen(message: str, called: list[str]) -> None:
    assert [t["function"]["name"] for t in choose_tools(TOOLS, message)] == called


def test_arguments_come_from_the_message_and_fit_the_schema() -> None:
    schema = WEATHER["function"]["parameters"]
    filled = Hints.of("How is the weather in Lisbon for 3 days?").fill(
        schema, {"city": "x", "days": 5, "unit": "c"}
    )
    assert filled == {"city": "Lisbon", "days": 3, "unit": "c"}  # the enum is kept
    out_of_range = Hints.of("weather in Paris for 30 days").fill(schema, {"city": "x", "days": 5})
    assert out_of_range == {"city": "Paris", "days": 5}  # 30 > maximum: the valid value stays
    quoted = Hints.of('weather in "New York"').fill(schema, {"city": "x"})
    assert quoted == {"city": "New York"}


def _post(sim: Any, body: dict[str, Any]) -> dict[str, Any]:
    with DeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        result = client.chat(body["messages"], tools=body["tools"], thinking=False)
    return {"calls": result.tool_calls, "content": result.content}


def test_over_http_the_call_is_deterministic_and_valid(sim: Any) -> None:
    body = {"messages": [{"role": "user", "content": "weather in Oslo for 2 days"}], "tools": TOOLS}
    first, again = _post(sim, body), _post(sim, body)
    assert first == again
    [call] = first["calls"]
    assert call.name == "get_weather"
    arguments = json.loads(call.arguments)
    assert arguments["city"] == "Oslo" and arguments["days"] == 2
    assert arguments["unit"] in ("c", "f")


def test_a_session_runs_the_tool_and_the_answer_uses_its_result(sim: Any) -> None:
    ran: list[tuple[str, str]] = []

    @tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c") -> str:
        """The weather forecast for a city."""
        ran.append((city, unit))
        return f"{city}: sunny, 21 degrees"

    with DeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        session = ChatSession(client, tools=[get_weather], params={"thinking": False})
        answer = session.send("What's the weather in Lisbon?")
    assert ran and ran[0][0] == "Lisbon"
    assert "Lisbon: sunny, 21 degrees" in answer.content  # the model read the result
