#!/usr/bin/env python3
"""The CPU a relayed stream costs in our own code, without sockets: steadier than
`gateway_overhead.py` on a noisy VM, for comparing two versions of the relay.

    .venv/bin/python bench/relay_cost.py                      # 256 streams in flight
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python bench/relay_cost.py  # A/B

The upstream's reads are captured once from the simulator (one 50-token answer, tokens
2 ms apart, so one chunk per read as from a real server) and replayed from memory, with
a yield to the event loop before each read, so N streams interleave as they do live.
Two ASGI apps relay them to a `send` that drops what it gets: `asgi_floor.py`'s relay
(forwards each read untouched) and the gateway's app (middleware, auth, validation, the
relay with its resume bookkeeping and metrics). The table shows CPU per stream (process
time, best of the rounds), the part of it spent in garbage collection, and the ratio.
What a socket, uvicorn and the kernel add comes on top, the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asgi_floor
from dskit.client._core import HTTPRequest
from dskit.client._h1 import H1Pool
from dskit.gateway import GatewaySettings, create_app
from dskit.sim import SimConfig, SimServer

PROMPT = "Write a long paragraph about rivers, take 3."
BODY = orjson.dumps({
    "model": "deepseek-flash", "thinking": {"type": "disabled"}, "stream": True, "max_tokens": 50,
    "messages": [{"role": "user", "content": PROMPT}],
})  # fmt: skip
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def capture() -> list[bytes]:
    """The reads of one streamed answer from the simulator, as the relay's pool sees them."""
    with SimServer(SimConfig(ttft_ms=5, token_ms=2)) as sim:
        pool = H1Pool()
        headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
        request = HTTPRequest("POST", f"{sim.base_url}/chat/completions", headers, BODY)
        async with pool.stream(request, (5.0, 30.0)) as response:
            reads = [data async for data in response.aiter_bytes()]
        await pool.aclose()
    return reads


class Replay:
    """An upstream connection pool that answers every request with the captured reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads
        self.status_code = 200
        self.headers = {"content-type": "text/event-stream"}

    @contextlib.asynccontextmanager
    async def stream(self, request: Any, timeouts: Any) -> AsyncIterator[Replay]:
        yield self

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for data in self.reads:
            await asyncio.sleep(0)  # a read waits on the network: other streams run
            yield data

    async def aclose(self) -> None:
        pass


def scope() -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer sk-bench"),
               (b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]  # fmt: skip
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "headers": headers, "state": {},
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


async def one_stream(app: App) -> int:
    """One request through `app`; the body pieces it sent."""
    taken, pieces = False, 0

    async def receive() -> dict[str, Any]:
        nonlocal taken
        if not taken:
            taken = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal pieces
        pieces += message["type"] == "http.response.body"

    await app(scope(), receive, send)
    return pieces


class GCTimer:
    """Time spent in garbage collection, from gc.callbacks."""

    def __init__(self) -> None:
        self.total = 0.0
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._began


async def measure(app: App, streams: int, rounds: int) -> tuple[float, float, int]:
    """(CPU µs per stream, GC µs per stream, body pieces per stream), best round."""
    for _ in range(200):  # warm: imports, caches, pools
        await one_stream(app)
    timer, best = GCTimer(), (float("inf"), 0.0, 0)
    for _ in range(rounds):
        timer.total = 0.0
        began = time.process_time()
        pieces = await asyncio.gather(*(one_stream(app) for _ in range(streams)))
        cpu = (time.process_time() - began) / streams * 1e6
        if cpu < best[0]:
            best = (cpu, timer.total / streams * 1e6, pieces[0])
    gc.callbacks.clear()
    return best


async def run(streams: int, rounds: int) -> None:
    reads = await capture()
    floor = asgi_floor.Relay("http://upstream.invalid")
    floor.pool = Replay(reads)  # type: ignore[assignment]
    gateway = create_app(GatewaySettings(upstream="http://upstream.invalid", store="memory"))
    rows = {}
    async with gateway.router.lifespan_context(gateway):
        pool = gateway.state.gateway.pool
        for client in pool.clients.values():
            client._http = Replay(reads)
        rows["asgi-floor"] = await measure(floor, streams, rounds)
        rows["gateway"] = await measure(gateway, streams, rounds)
    print(f"{len(reads)} upstream reads per stream, {streams} streams in flight, "
          f"best of {rounds} rounds\n")  # fmt: skip
    print("| app | CPU µs/stream | of it GC | body pieces | vs asgi-floor |")
    print("|---|---|---|---|---|")
    base = rows["asgi-floor"][0]
    for name, (cpu, in_gc, pieces) in rows.items():
        print(f"| {name} | {cpu:.0f} | {in_gc:.0f} | {pieces} | {cpu / base:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=256, help="streams in flight")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the best is shown")
    args = parser.parse_args()
    uvloop.run(run(args.streams, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
