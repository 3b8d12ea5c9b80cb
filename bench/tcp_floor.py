#!/usr/bin/env python3
"""The floor for any proxy written in Python on this machine: a byte-for-byte TCP proxy.

    python bench/tcp_floor.py LISTEN_PORT UPSTREAM_PORT

`gateway_overhead.py` runs it in front of the simulator as the target `tcp-floor`. It
parses nothing (no HTTP, no SSE, no JSON): each read from one side is written to the
other from the protocol callback, on uvloop, with no task per connection after the
upstream connection is made. What it adds to a stream is what a process in the middle
costs here (two more socket hops, one more process competing for the cores), so a
figure that it misses too is set by the machine, not by the code of a proxy.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class Upstream(asyncio.Protocol):
    """The connection to the simulator: whatever it sends goes to the client."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    """One client connection; its bytes are held until the upstream connection is up."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.held: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: Upstream(self.transport), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        if self.closed:
            upstream.close()
            return
        self.upstream = upstream
        for data in self.held:
            upstream.write(data)
        self.held.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.held.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.upstream is not None:
            self.upstream.close()


async def serve(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(upstream_port), "127.0.0.1", listen_port, backlog=4096
    )
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
