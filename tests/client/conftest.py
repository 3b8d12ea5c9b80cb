"""Client test helpers: an injected clock, and a transport that counts open responses."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from dskit import AsyncDeepSeek, DeepSeek, RetryPolicy

_keys = itertools.count()


class FakeClock:
    """Time that moves only when the code under test sleeps; records every sleep."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class CountingTransport(httpx2.HTTPTransport):
    """The real HTTP transport, counting responses opened and closed (a leak detector)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0
        self.closed = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        self.opened += 1
        stream = response.stream
        counter = self

        class _Counted(httpx2.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                yield from stream  # type: ignore[union-attr]

            def close(self) -> None:
                counter.closed += 1
                stream.close()  # type: ignore[union-attr]

        response.stream = _Counted()
        return response


def fault_key() -> str:
    """A key unique to this process, for X-Sim-Fault-Key."""
    return f"k{next(_keys)}-{id(object())}"


def faults_once(times: int = 1, **headers: Any) -> dict[str, str]:
    """X-Sim-* fault headers that apply to the first `times` requests only."""
    out = {"X-Sim-Fault-Key": fault_key(), "X-Sim-Fault-Times": str(times)}
    for name, value in headers.items():
        out["X-Sim-" + name.replace("_", "-")] = str(value)
    return out


FIXED_JITTER = RetryPolicy(jitter=lambda: 1.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(sim: Any, clock: FakeClock) -> Iterator[DeepSeek]:
    with DeepSeek(
        "sk-test-key-000000", base_url=sim.base_url, clock=clock, retry=FIXED_JITTER
    ) as c:
        yield c


@pytest.fixture
async def aclient(sim: Any, clock: FakeClock) -> Any:
    async with AsyncDeepSeek(
        "sk-test-key-000000", base_url=sim.base_url, clock=clock, retry=FIXED_JITTER
    ) as c:
        yield c
