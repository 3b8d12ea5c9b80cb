"""Session fixtures: real clients on the simulator, and each store kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dskit import AsyncDeepSeek, DeepSeek, tool
from dskit.store import SessionStore
from tests.store.conftest import KINDS, make_store

KEY = "sk-session-test-key-000000"


@pytest.fixture
def client(sim: Any) -> Iterator[DeepSeek]:
    with DeepSeek(api_key=KEY, base_url=sim.base_url) as made:
        yield made


@pytest.fixture
async def aclient(sim: Any) -> AsyncIterator[AsyncDeepSeek]:
    made = AsyncDeepSeek(api_key=KEY, base_url=sim.base_url)
    yield made
    await made.aclose()


@pytest.fixture(params=KINDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    made = make_store(request.param, request, tmp_path)
    yield made
    made.close()


@tool
def get_weather(city: str) -> dict[str, Any]:
    """Current weather in a city.

    Args:
        city: The city's name.
    """
    return {"city": city, "sky": "sunny", "celsius": 21}


@tool
def get_time(zone: str) -> str:
    """The current time in a time zone."""
    return f"12:00 in {zone}"


@tool
def explode(reason: str) -> str:
    """A tool that always fails."""
    raise RuntimeError(f"kaboom: {reason}")
