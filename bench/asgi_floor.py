#!/usr/bin/env python3
"""The floor for a relay on the gateway's stack: uvicorn + dskit's H1 pool, nothing else.

    python bench/asgi_floor.py LISTEN_PORT UPSTREAM_URL

`gateway_overhead.py` runs it in front of the simulator as the target `asgi-floor`. It is
an ASGI app on uvicorn (httptools, uvloop: what `dskit serve` runs on) that sends each
`POST /v1/chat/completions` body to the upstream through `H1Pool` (the gateway client's
connection pool) and writes every piece the upstream sends straight to the client: no
auth, validation, parsing, resume, metrics or middleware. What the gateway costs above
this row is its own work; what this row costs above `tcp-floor` is uvicorn's and the
pool's.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from dskit.client._core import HTTPRequest
from dskit.client._h1 import H1Pool

UPSTREAM_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-floor"}
EVENT_STREAM = [(b"content-type", b"text/event-stream")]


class Relay:
    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.pool: H1Pool | None = None  # made on the server's loop, at the first request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        body = await read_body(receive)
        if scope["path"] != "/v1/chat/completions":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if self.pool is None:
            self.pool = H1Pool(max_connections=4096, max_keepalive=1024)
        request = HTTPRequest("POST", self.url, UPSTREAM_HEADERS, body)
        async with self.pool.stream(request, (5.0, 60.0)) as response:
            start = {"type": "http.response.start", "status": response.status_code}
            await send({**start, "headers": EVENT_STREAM})
            async for data in response.aiter_bytes():
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def lifespan(self, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if self.pool is not None:
            await self.pool.aclose()
        await send({"type": "lifespan.shutdown.complete"})


async def read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


if __name__ == "__main__":
    uvicorn.run(
        Relay(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), access_log=False,
        log_config=None, lifespan="on",
    )  # fmt: skip
