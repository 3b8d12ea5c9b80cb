"""`POST /v1/chat/completions` and `GET /v1/models`: the OpenAI-compatible surface."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dskit.gateway._deps import (
    GatewayDep,
    Limited,
    Principal,
    authenticate,
    take_token,
    upstream_headers,
)  # fmt: skip
from dskit.gateway._errors import GatewayError, error_response, from_exception, validation_error
from dskit.gateway._middleware import BodyTooLarge
from dskit.gateway._relay import Relay, client_params, completion_body
from dskit.gateway._response import EventStreamResponse
from dskit.gateway._schemas import ChatCompletionRequest, ModelCard, ModelList
from dskit.gateway._state import Gateway

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
    return await relay_response(gw, body, request)


async def relay_response(gw: Gateway, body: ChatCompletionRequest, request: Request) -> Response:
    messages, params = client_params(body)
    params["extra_headers"] = upstream_headers(request, gw)
    started = time.monotonic()
    if not body.stream:
        return await _complete(gw, messages, params, started)
    try:
        relay = Relay(gw.client.stream(messages, **params), body.model, gw.metrics, started)
        await relay.prime()
    except Exception as exc:
        raise _counted(gw, exc) from None
    return EventStreamResponse(relay.body())


class FastChatCompletions:
    """`POST /v1/chat/completions` as a plain ASGI app: the documented route's behaviour
    (auth, rate limit, pydantic validation, the same errors) without FastAPI's
    per-request dependency solving, which costs more than the relay itself."""

    path = "/v1/chat/completions"

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # what the metrics middleware labels requests with
        request = Request(scope, receive)
        try:
            response = await self._handle(request)
        except BodyTooLarge:
            raise
        except Exception as exc:  # every failure answers in the one error shape
            response = error_response(from_exception(exc))
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        gw = self.gw
        await take_token(gw, authenticate(gw, request))
        try:
            body = ChatCompletionRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as exc:
            gw.metrics.errors.labels("validation").inc()
            raise validation_error(exc.errors(include_url=False)) from None
        return await relay_response(gw, body, request)


def fast_chat_route(gw: Gateway) -> Route:
    return Route(FastChatCompletions.path, FastChatCompletions(gw), methods=["POST"])


async def _complete(
    gw: Gateway, messages: list[dict[str, Any]], params: dict[str, Any], started: float
) -> Response:
    try:
        result = await gw.client.chat(messages, **params)
    except Exception as exc:
        raise _counted(gw, exc) from None
    gw.metrics.count_usage(result.usage)
    gw.metrics.latency.labels("chat_completions").observe(time.monotonic() - started)
    body = completion_body(result, f"chatcmpl-{result.id or 'dskit'}", params["model"])
    return JSONBytes(orjson.dumps(body))


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
