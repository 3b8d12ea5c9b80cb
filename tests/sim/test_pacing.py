"""The simulator paces tokens on an absolute schedule, as a model's token rate is."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from dskit.sim._stream import Shaped, Timing, write_events

TOKEN = 0.05
WRITE = 0.06
PIECES = 4


async def test_slow_writes_do_not_push_later_tokens_back() -> None:
    """Writes slower than the token interval: the next token is already due, so it goes
    out at once. Sleeping a whole interval after each write would leave gaps of at least
    TOKEN between writes (asyncio.sleep never returns early)."""
    loop = asyncio.get_running_loop()
    spans: list[tuple[float, float]] = []

    async def slow_send(message: dict[str, Any]) -> None:
        began = loop.time()
        await asyncio.sleep(WRITE)
        spans.append((began, loop.time()))

    events = [b"data: %d\n\n" % i for i in range(PIECES)]
    shaped = Shaped(events, lead=1, tail=0)
    await write_events(slow_send, shaped, Timing(token=TOKEN))
    assert len(spans) == PIECES
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(spans)]
    assert sum(gaps) < (PIECES - 1) * TOKEN / 2, gaps


async def test_fast_writes_keep_the_configured_interval() -> None:
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def send(message: dict[str, Any]) -> None:
        stamps.append(loop.time())

    start = loop.time()
    shaped = Shaped([b"x"] * PIECES, lead=1, tail=0)
    await write_events(send, shaped, Timing(ttft=TOKEN, token=TOKEN))
    for index, stamp in enumerate(stamps):
        assert stamp - start >= TOKEN * (index + 1) - 0.001, (index, stamps)
