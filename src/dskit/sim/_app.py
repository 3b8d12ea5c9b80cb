"""The simulator as a raw ASGI 3 application (no framework on the hot path).

`SimApp` routes, authenticates, counts, and hands chat and FIM requests to `_completions`,
Anthropic Messages to `_anthropic` and OpenAI Responses to `_responses` (each a
translation onto the same planning). Each route belongs to a surface: where its API key
is read from and how its error bodies are worded.
It can be served by any ASGI server or embedded (the gateway's default upstream); every
bad input becomes a DeepSeek-shaped 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from dskit._models import CURRENT_MODELS
from dskit._tokens import COUNTER
from dskit.sim._anthropic import count_tokens, messages
from dskit.sim._anthropic_wire import anthropic_error_body
from dskit.sim._cache import PrefixCache
from dskit.sim._completions import chat, fim
from dskit.sim._config import SimConfig
from dskit.sim._faults import FaultKeys
from dskit.sim._request import RequestError
from dskit.sim._responses import responses
from dskit.sim._stream import Abort, Send, body, start
from dskit.sim._wire import error_body

Receive = Callable[[], Awaitable[dict[str, Any]]]
Handler = Callable[["SimApp", "Request", Send], Awaitable[None]]
ErrorBody = Callable[[int, str | None, str | None], bytes]

BALANCE = {
    "is_available": True,
    "balance_infos": [
        {
            "currency": "CNY",
            "total_balance": "110.00",
            "granted_balance": "10.00",
            "topped_up_balance": "100.00",
        }
    ],
}


class _HideAborts(logging.Filter):
    """Uvicorn logs any exception that ends a response; a deliberate break is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        return not (info and isinstance(info[1], Abort))


_uvicorn_log = logging.getLogger("uvicorn.error")
if not any(isinstance(f, _HideAborts) for f in _uvicorn_log.filters):
    _uvicorn_log.addFilter(_HideAborts())


@dataclass
class SimStats:
    """Counters for tests and benchmarks (read them as attributes or `stats["name"]`)."""

    requests: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    faults_injected: int = 0
    prefix_requests: int = 0
    packed_requests: int = 0
    streams: int = 0
    rejected_concurrency: int = 0

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


@dataclass(slots=True)
class Request:
    """What a handler needs from one HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    receive: Receive
    trace_id: str = field(default_factory=lambda: secrets.token_hex(16))
    gone: bool = False
    errors: ErrorBody = error_body  # how this request's surface words an error body

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any], receive: Receive) -> Request:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        return cls(scope["method"], scope["path"], headers, receive)

    def json_headers(self, content_type: bytes = b"application/json") -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type), (b"x-ds-trace-id", self.trace_id.encode())]


async def _models(app: SimApp, request: Request, send: Send) -> None:
    data = [m.to_wire() for m in CURRENT_MODELS if m.id in app.config.models]
    await app.send_json(send, request, 200, orjson.dumps({"object": "list", "data": data}))


async def _balance(app: SimApp, request: Request, send: Send) -> None:
    await app.send_json(send, request, 200, orjson.dumps(BALANCE))


async def _chat(app: SimApp, request: Request, send: Send) -> None:
    await chat(app, request, send, beta=False)


async def _beta_chat(app: SimApp, request: Request, send: Send) -> None:
    await chat(app, request, send, beta=True)


def bearer_key(headers: Mapping[str, str]) -> str | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def anthropic_key(headers: Mapping[str, str]) -> str | None:
    """The Anthropic surface also takes `x-api-key`; when both are sent, Bearer wins."""
    if "authorization" in headers:
        return bearer_key(headers)
    return headers.get("x-api-key", "").strip()


@dataclass(frozen=True, slots=True)
class Surface:
    """One wire format's conventions: where its key is and how it words an error."""

    errors: ErrorBody = error_body
    key_of: Callable[[Mapping[str, str]], str | None] = bearer_key


DEEPSEEK = Surface()
ANTHROPIC = Surface(anthropic_error_body, anthropic_key)
ANTHROPIC_PREFIX = "/anthropic/"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    handler: Handler
    surface: Surface = DEEPSEEK


ROUTES: dict[str, Route] = {
    "/chat/completions": Route("POST", _chat),
    "/v1/chat/completions": Route("POST", _chat),
    "/beta/chat/completions": Route("POST", _beta_chat),
    "/beta/completions": Route("POST", fim),
    "/models": Route("GET", _models),
    "/v1/models": Route("GET", _models),
    "/user/balance": Route("GET", _balance),
    "/v1/user/balance": Route("GET", _balance),
    "/anthropic/v1/messages": Route("POST", messages, ANTHROPIC),
    "/anthropic/messages": Route("POST", messages, ANTHROPIC),
    "/anthropic/v1/messages/count_tokens": Route("POST", count_tokens, ANTHROPIC),
    "/anthropic/messages/count_tokens": Route("POST", count_tokens, ANTHROPIC),
    "/responses": Route("POST", responses),
    "/v1/responses": Route("POST", responses),
}


class SimApp:
    """The ASGI application; its state (cache, counters, fault keys) lives on one loop."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        COUNTER.load()  # now, in the caller's thread, not on the first request's loop
        self.stats = SimStats()
        self.cache = PrefixCache(self.config.cache_blocks)
        self.fault_keys = FaultKeys()
        self.rng = random.Random(self.config.seed)
        self.active = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request.from_scope(scope, receive)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._dispatch(request, send)
        except asyncio.CancelledError:
            if self._closing:
                raise Abort from None
            if not request.gone:
                raise
        finally:
            self._tasks.discard(task)

    def abort_all(self) -> None:
        """Break every response in flight (called on the server's loop when it stops)."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()

    async def _dispatch(self, request: Request, send: Send) -> None:
        stats = self.stats
        stats.requests += 1
        stats.by_path[request.path] = stats.by_path.get(request.path, 0) + 1
        route = ROUTES.get(request.path)
        if request.path.startswith(ANTHROPIC_PREFIX):
            request.errors = ANTHROPIC.errors
        if route is None:
            await self.send_error(send, request, 404, f"Not Found: {request.path}")
            return
        if request.method != route.method:
            await self.send_error(send, request, 405, f"Method Not Allowed: use {route.method}")
            return
        request.errors = route.surface.errors
        if (problem := self._auth_problem(route.surface.key_of(request.headers))) is not None:
            await self.send_error(send, request, 401, problem)
            return
        try:
            await route.handler(self, request, send)
        except RequestError as exc:
            await self.send_error(send, request, exc.status, exc.message, exc.param)

    def _auth_problem(self, key: str | None) -> str | None:
        keys = self.config.api_keys
        if key and (not keys or key in keys):
            return None
        return f"Authentication Fails, Your api key: ****{(key or '')[-4:]} is invalid"

    async def send_json(
        self,
        send: Send,
        request: Request,
        status: int,
        data: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = b"application/json",
    ) -> None:
        headers = request.json_headers(content_type) + (extra or [])
        headers.append((b"content-length", str(len(data)).encode()))
        self.count_status(status)
        await start(send, status, headers)
        await body(send, data, more=False)

    async def send_error(
        self, send: Send, request: Request, status: int, message: str, param: str | None = None
    ) -> None:
        await self.send_json(send, request, status, request.errors(status, message, param))

    def count_status(self, status: int) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
