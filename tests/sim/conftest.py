"""Fixtures of the simulator tests: an httpx2 client on the suite's shared simulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.sim.sim_helpers import AUTH


@pytest.fixture
def client(sim: Any) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sim.base_url, headers=AUTH, timeout=20) as http:
        yield http
