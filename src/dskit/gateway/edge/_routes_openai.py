"""`POST /v1/chat/completions` and `GET /v1/models`: the OpenAI-compatible surface."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import Response

from dskit.client._types import ChatResult
from dskit.gateway._compose import Gateway
from dskit.gateway._errors import (
    GatewayError,
    from_exception,
)
from dskit.gateway._schemas import ChatCompletionRequest, ModelCard, ModelList
from dskit.gateway.answers._cache import CACHE_HEADER, CacheRequest
from dskit.gateway.answers._quota import charge_tokens
from dskit.gateway.answers._runner import open_answer
from dskit.gateway.answers._sources import UpstreamSource
from dskit.gateway.edge._deps import (
    GatewayDep,
    Limited,
    Principal,
    caller_of,
    take_token,
    upstream_headers,
)
from dskit.gateway.edge._fast import FastRoute
from dskit.gateway.edge._response import EventStreamResponse, pieces
from dskit.gateway.wire._cached import cached_body, cached_chunks
from dskit.gateway.wire._relay import Relay, client_params, completion_body

router = APIRouter(tags=["openai-compatible"])
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion (JSON), or with `stream: true` an SSE stream of "
        "`chat.completion.chunk` objects ending with `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class JSONBytes(Response):
    media_type = "application/json"


@router.post("/v1/chat/completions", responses=STREAM_DOC)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, gw: GatewayDep, who: Limited
) -> Response:
    """Relay a chat completion through dskit's client (retries and resume included).

    (Served by `FastChatCompletions` below; this route documents it in the schema.)
    """
    return await relay_response(gw, body, request, who)


async def relay_response(
    gw: Gateway, body: ChatCompletionRequest, request: Request, who: str
) -> Response:
    messages, params = client_params(body)
    await charge_tokens(gw.token_limiter, who, messages)
    params["extra_headers"] = upstream_headers(request, gw)
    started = time.monotonic()
    try:
        opened = await open_answer(gw.answers, messages, params, request.headers, who)
    except Exception as exc:
        raise _counted(gw, exc) from None
    source = opened.source
    if not isinstance(source, UpstreamSource):  # from the cache
        return _cached(source.snapshot(), body)
    marks = {CACHE_HEADER: opened.lookup} if opened.lookup else {}
    done = _on_done(gw, opened.key)
    if not body.stream:
        return await _complete(gw, source, done, params["model"], started, marks)
    relay = Relay(source, body.model, gw.metrics, started, done)
    return EventStreamResponse(relay.write, marks)


def _cached(result: ChatResult, body: ChatCompletionRequest) -> Response:
    """A cached answer, marked by header and field, as a stream or JSON as asked."""
    headers = {CACHE_HEADER: "hit"}
    if body.stream:
        return EventStreamResponse(pieces(cached_chunks(result, body.model)), headers)
    return JSONBytes(orjson.dumps(cached_body(result, body.model)), headers=headers)


def _on_done(gw: Gateway, key: CacheRequest | None) -> Callable[[ChatResult], Awaitable[None]]:
    """What follows a relayed answer received whole (streamed or not): it is cached
    (when the request uses the cache)."""

    async def done(result: ChatResult) -> None:
        if result.finish_reason is not None:
            await gw.cache.store(key, result)

    return done


class FastChatCompletions(FastRoute):
    """`POST /v1/chat/completions` as a plain ASGI app: the documented route's behaviour
    (auth, rate limit, pydantic validation) without FastAPI's per-request dependency
    solving, which costs more than the relay itself (see `_fast.py`)."""

    path = "/v1/chat/completions"

    async def handle(self, request: Request) -> Response | None:
        """The relay's response; None for a body the documented route must answer."""
        gw = self.gw
        who = caller_of(request).principal
        try:
            body = ChatCompletionRequest.model_validate_json(await request.body())
        except pydantic.ValidationError:
            return None
        await take_token(gw, who)
        return await relay_response(gw, body, request, who)


async def _complete(
    gw: Gateway, source: UpstreamSource, done: Callable[[ChatResult], Awaitable[None]],
    model: str, started: float, headers: dict[str, str],
) -> Response:  # fmt: skip
    try:
        async with source.stream:
            result = await source.stream.final()
    except Exception as exc:
        source.ended(exc)
        raise _counted(gw, exc) from None
    source.ended(None)
    await done(result)
    gw.metrics.count_usage(result.usage)
    gw.metrics.latency.labels("chat_completions").observe(time.monotonic() - started)
    body = completion_body(result, model)
    return JSONBytes(orjson.dumps(body), headers=headers)


def _counted(gw: Gateway, exc: Exception) -> GatewayError:
    error = from_exception(exc)
    gw.metrics.errors.labels(error.kind).inc()
    return error


@router.get("/v1/models", response_model=ModelList)
async def models(gw: GatewayDep, who: Principal) -> ModelList:
    """The upstream's models."""
    try:
        found = await gw.client.models()
    except Exception as exc:
        raise _counted(gw, exc) from None
    return ModelList(data=[ModelCard(id=m.id, owned_by=m.owned_by) for m in found])
