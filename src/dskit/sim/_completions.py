"""Chat and FIM completions: controls, validation, planning, and the response itself.

The pipeline is shared by every format the simulator speaks: `read_request` (controls,
body, a status fault), the format's own translation and checks, then `answer_chat` (a
concurrency slot, the plan, the context cache) and `answer` (faults, latency, streamed or
whole), which renders the plan through the format's `Renderer`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dskit._tokens import COUNTER
from dskit._validate import thinking_enabled
from dskit.sim._cache import CacheResult
from dskit.sim._faults import ControlError, Controls, parse_controls, random_fault
from dskit.sim._plan import Reply, is_prefix_message, plan_chat, plan_fim, truncate
from dskit.sim._request import RequestError, check_chat, check_fim, parse_json, read_body
from dskit.sim._stream import (
    Send,
    Shaped,
    StreamEncoder,
    Timing,
    keep_alive,
    shape,
    start,
    write_events,
    write_whole,
)
from dskit.sim._wire import (
    KEEPALIVE_JSON,
    KEEPALIVE_SSE,
    ChunkEncoder,
    Envelope,
    TextChunkEncoder,
    chat_completion,
    logprobs_wanted,
    text_completion,
    usage_dict,
)

if TYPE_CHECKING:
    from dskit.sim._app import Request, SimApp

SSE = b"text/event-stream; charset=utf-8"
T = TypeVar("T")


class Renderer(StreamEncoder, Protocol):
    """One response in one wire format: the plan as a whole body or as stream events."""

    def whole(self, reply: Reply, cache: CacheResult) -> bytes: ...

    def events(self, reply: Reply, cache: CacheResult) -> list[bytes]: ...


class ChatRenderer:
    """DeepSeek's own format: `chat.completion` (or FIM `text_completion`) and chunks."""

    def __init__(self, data: dict[str, Any], *, fim: bool) -> None:
        self.env = Envelope.new(data["model"])
        self.fim = fim
        include = bool((data.get("stream_options") or {}).get("include_usage"))
        self.logprobs = None if fim else logprobs_wanted(data)
        self.encoder = (
            TextChunkEncoder(self.env, include)
            if fim
            else ChunkEncoder(self.env, include, thinking_enabled(data), self.logprobs)
        )
        self.LEAD = self.encoder.LEAD
        self.TAIL = self.encoder.TAIL

    def whole(self, reply: Reply, cache: CacheResult) -> bytes:
        if self.fim:
            return text_completion(self.env, reply, usage_dict(reply, cache))
        return chat_completion(self.env, reply, usage_dict(reply, cache), self.logprobs)

    def events(self, reply: Reply, cache: CacheResult) -> list[bytes]:
        return self.encoder.events(reply, usage_dict(reply, cache))

    def malformed(self) -> bytes:
        return self.encoder.malformed()


def _controls(app: SimApp, request: Request) -> Controls:
    try:
        controls = parse_controls(request.headers)
        controls = app.fault_keys.admit(request.headers, controls)
    except ControlError as exc:
        raise RequestError(400, str(exc)) from None
    controls = random_fault(app.rng, app.config, controls)
    if controls.has_fault:
        app.stats.faults_injected += 1
    return controls


def _timing(app: SimApp, c: Controls) -> Timing:
    config = app.config
    return Timing(
        ttft=(config.ttft_ms if c.ttft_ms is None else c.ttft_ms) / 1000,
        token=(config.token_ms if c.token_ms is None else c.token_ms) / 1000,
        queue=(c.queue_ms or 0) / 1000,
        keepalive=(config.keepalive_interval_ms if c.keepalive_ms is None else c.keepalive_ms)
        / 1000,
        stall_after=c.stall_after_events,
        stall=(c.stall_ms or 0) / 1000,
    )


async def _status_fault(app: SimApp, request: Request, send: Send, c: Controls) -> None:
    """Answer with the status X-Sim-Status asked for, shaped as DeepSeek (or as raw text)."""
    status = c.status or 500
    extra = []
    if c.retry_after is not None:
        extra.append((b"retry-after", c.retry_after.encode("latin-1")))
    if c.retry_after_ms is not None:
        extra.append((b"retry-after-ms", c.retry_after_ms.encode("latin-1")))
    data = request.errors(status, None, None)
    content_type = b"application/json"
    if c.error_body is not None:
        plain = c.error_body.lower() in ("", "1", "true", "yes", "text")
        text = f"{status} error" if plain else c.error_body
        data = text.encode("latin-1", "replace")
        content_type = b"application/octet-stream"
    await app.send_json(send, request, status, data, extra, content_type)


async def read_request(app: SimApp, request: Request, send: Send) -> tuple[Controls, Any]:
    """The request's controls and JSON body; None as body when a status fault answered."""
    controls = _controls(app, request)
    raw = await read_body(request.receive, request.headers, app.config.max_body_bytes)
    if controls.status is not None:
        await _status_fault(app, request, send, controls)
        return controls, None
    return controls, parse_json(raw, request.headers)


def checked(check: Callable[[], T]) -> T:
    """Run a check (or a translation); anything unexpected in it is still the client's bad
    input (400)."""
    try:
        return check()
    except RequestError:
        raise
    except Exception as exc:  # never a 500 for a body we could not make sense of
        raise RequestError(400, f"Invalid request body ({type(exc).__name__})") from None


@contextlib.asynccontextmanager
async def _slot(app: SimApp) -> AsyncIterator[None]:
    cap = app.config.max_concurrency
    if cap is not None and app.active >= cap:
        app.stats.rejected_concurrency += 1
        raise RequestError(429, "Rate Limit Reached: too many concurrent requests, slow down")
    app.active += 1
    try:
        yield
    finally:
        app.active -= 1


async def chat(app: SimApp, request: Request, send: Send, *, beta: bool) -> None:
    controls, data = await read_request(app, request, send)
    if data is None:
        return
    checked(lambda: check_chat(data, app.config, beta))
    if is_prefix_message(data["messages"][-1]):
        app.stats.prefix_requests += 1
    await answer_chat(app, request, send, data, controls, ChatRenderer(data, fim=False))


async def fim(app: SimApp, request: Request, send: Send) -> None:
    controls, data = await read_request(app, request, send)
    if data is None:
        return
    checked(lambda: check_fim(data, app.config))
    async with _slot(app):
        reply = plan_fim(data, app.config.seed)
        prompt = COUNTER.fim(data["prompt"], data.get("suffix") or "")
        renderer = ChatRenderer(data, fim=True)
        stream = bool(data.get("stream"))
        cache = CacheResult(prompt, 0)
        await answer(app, request, send, reply, cache, controls, renderer, stream=stream)


async def answer_chat(
    app: SimApp,
    request: Request,
    send: Send,
    data: dict[str, Any],
    controls: Controls,
    renderer: Renderer,
) -> None:
    """Plan the reply to a checked chat body (any format's, translated) and answer it."""
    async with _slot(app):
        reply = plan_chat(data, app.config.seed, controls.pack_fault or app.config.pack_fault)
        if reply.packed:
            app.stats.packed_requests += 1
        cache = app.cache.lookup_and_store(
            data["model"], data["messages"], data.get("tools"), thinking=thinking_enabled(data)
        )
        stream = bool(data.get("stream"))
        await answer(app, request, send, reply, cache, controls, renderer, stream=stream)


async def answer(
    app: SimApp,
    request: Request,
    send: Send,
    reply: Reply,
    cache: CacheResult,
    c: Controls,
    renderer: Renderer,
    *,
    stream: bool,
) -> None:
    """Render the planned reply in the renderer's format, streamed or whole."""
    if c.insufficient_after_events is not None:
        reply = truncate(reply, c.insufficient_after_events, "insufficient_system_resource")
    if c.aborted_after_events is not None:  # DeepSeek's newer finish_reason
        reply = truncate(reply, c.aborted_after_events, "aborted")
    timing = _timing(app, c)
    if not stream:
        delay = timing.ttft + timing.token * reply.completion_tokens
        await _whole(app, request, send, renderer.whole(reply, cache), delay, timing, c)
        return
    shaped = shape(renderer, renderer.events(reply, cache), c)
    await _stream(app, request, send, shaped, timing)


async def _stream(
    app: SimApp, request: Request, send: Send, shaped: Shaped, timing: Timing
) -> None:
    app.stats.streams += 1
    app.count_status(200)
    headers = [*request.json_headers(SSE), (b"cache-control", b"no-cache")]
    await start(send, 200, headers)
    async with _watch_disconnect(request, send, active=not timing.idle) as out:
        await keep_alive(out, timing, KEEPALIVE_SSE)
        await write_events(out, shaped, timing)


async def _whole(
    app: SimApp,
    request: Request,
    send: Send,
    data: bytes,
    delay: float,
    timing: Timing,
    c: Controls,
) -> None:
    async with _watch_disconnect(request, send, active=not timing.idle) as out:
        if timing.queue <= 0 and c.drop_after_bytes is None:
            if delay > 0:  # no latency asked: no extra turn of the event loop either
                await asyncio.sleep(delay)
            await app.send_json(out, request, 200, data)
            return
        app.count_status(200)
        await start(out, 200, request.json_headers())
        await keep_alive(out, timing, KEEPALIVE_JSON)
        if delay > 0:
            await asyncio.sleep(delay)
        await write_whole(out, data, c.drop_after_bytes)


@contextlib.asynccontextmanager
async def _watch_disconnect(request: Request, send: Send, *, active: bool) -> AsyncIterator[Send]:
    """While a slow response is written, stop it as soon as the client goes away.

    Yields the `send` to use: it notes when the response is complete, so a disconnect
    seen after that (uvicorn reports one once the response is done) cancels nothing.
    """
    task = asyncio.current_task()
    if not active or task is None:
        yield send
        return
    finished = False

    async def tracked(message: dict[str, Any]) -> None:
        nonlocal finished
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished = True
        await send(message)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if not finished:
            request.gone = True
            task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield tracked
    finally:
        watcher.cancel()
