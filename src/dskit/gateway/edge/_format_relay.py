"""Relays of the wire formats dskit does not speak itself: Anthropic Messages and OpenAI
Responses, passed to the upstream's own endpoints as they are.

A request is checked (a JSON object, within the body limit), charged to its principal
(the request bucket and the tokens bucket, from an estimate of its prompt), then POSTed
once through the upstream client's connection pool (`AsyncDeepSeek.send`: the gateway's
key, never the caller's). The answer goes back unchanged: a JSON body whole, an SSE
stream piece by piece as the upstream's reads arrive (these formats end without
`[DONE]`), each write awaited (backpressure), and a client that leaves closes the
upstream request. Errors are the format's own shape (`Format.error_body`), keeping the
upstream's status and message (scrubbed of the upstream key), except that an upstream
401/403 (the operator's key) is the caller's 502. What differs between the formats is
one `Format` value each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from dskit.client._async import RawResponse
from dskit.gateway._compose import Gateway
from dskit.gateway._errors import GatewayError, from_exception, logged_error, malformed_json
from dskit.gateway.answers._quota import charge_tokens
from dskit.gateway.edge._deps import caller_of, take_token, upstream_headers
from dskit.gateway.edge._middleware import BodyTooLarge
from dskit.gateway.edge._response import EventStreamResponse, body_message

Prompt = list[Mapping[str, Any]]
PASSED_HEADERS = ("anthropic-version", "anthropic-beta")  # the rest are the gateway's own
ERROR_PREVIEW = 500  # characters of a non-JSON upstream error body kept in the message


@dataclass(frozen=True, slots=True)
class Format:
    """One wire format: its upstream path, where its key may be, how its errors look and
    what of a request is the prompt (for the tokens bucket)."""

    name: str  # the metrics' endpoint label
    upstream_path: str
    root: bool  # the upstream path lives beside `/v1` (Anthropic), not under it
    x_api_key: bool
    error_body: Callable[[GatewayError], dict[str, Any]]
    prompt: Callable[[dict[str, Any]], Prompt]

    def encode_error(self, error: GatewayError) -> bytes:
        return orjson.dumps(self.error_body(error))

    def error_response(self, error: GatewayError) -> Response:
        return Response(
            self.encode_error(error), status_code=error.status,
            media_type="application/json", headers=error.headers(),
        )  # fmt: skip

    def stream_error(self, error: GatewayError) -> bytes:
        """An error after the stream started: an `error` event both SDKs raise."""
        data = {"type": "error", **self.error_body(error)}
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


async def relay(fmt: Format, gw: Gateway, request: Request, suffix: str = "") -> Response:
    """The whole exchange for one request to `fmt.upstream_path + suffix`: every failure
    answers in the format's shape."""
    path = fmt.upstream_path + suffix
    started = time.monotonic()
    stack = AsyncExitStack()
    try:
        response = await _open(fmt, gw, request, path, stack)
        if _is_stream(response):
            return EventStreamResponse(Passing(fmt, gw, response, stack, started).write)
        body = await response.aread()
        await stack.aclose()
        gw.metrics.latency.labels(fmt.name).observe(time.monotonic() - started)
        return Response(body, media_type=response.headers.get("content-type"))
    except BodyTooLarge:
        await stack.aclose()
        raise  # the middleware answers 413
    except Exception as exc:
        await stack.aclose()
        error = logged_error(exc, path)
        gw.metrics.errors.labels(error.kind).inc()
        return fmt.error_response(error)


async def _open(
    fmt: Format, gw: Gateway, request: Request, path: str, stack: AsyncExitStack
) -> RawResponse:
    """Authorised, charged and sent: the upstream's successful response, head arrived."""
    who = caller_of(request).principal
    await take_token(gw, who)
    content = await request.body()
    await charge_tokens(gw.token_limiter, who, fmt.prompt(parse_object(content)))
    headers = {**_passed(request), **upstream_headers(request, gw)}
    headers["Accept"] = request.headers.get("accept") or "application/json"
    try:
        response = await stack.enter_async_context(
            gw.client.send(path, content, headers=headers, root=fmt.root)
        )
    except Exception as exc:
        raise _transport_error(exc) from None
    if response.status_code >= 400:
        raise upstream_error(response.status_code, response.headers, await response.aread(), gw)
    return response


def parse_object(content: bytes) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise, as DeepSeek answers)."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise malformed_json(exc) from None
    if not isinstance(data, dict):
        raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def _passed(request: Request) -> dict[str, str]:
    return {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}


def _is_stream(response: RawResponse) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def _transport_error(exc: Exception) -> GatewayError:
    """The upstream could not be reached or timed out (httpx2's errors, as the pool's)."""
    import httpx2

    if isinstance(exc, httpx2.TimeoutException):
        return GatewayError(504, "upstream: timed out", "upstream_error", code="upstream_timeout")
    if isinstance(exc, httpx2.TransportError):
        return GatewayError(
            502, f"upstream: {type(exc).__name__}", "upstream_error", code="upstream_error"
        )
    return from_exception(exc)


def upstream_error(
    status: int, headers: Mapping[str, str], body: bytes, gw: Gateway
) -> GatewayError:
    """An upstream error answer, in either format's shape or none: its status, type,
    message (without the upstream key) and param; an upstream 401/403 becomes 502."""
    detail = _error_detail(body)
    message = gw.client.redact(str(detail.get("message") or f"upstream answered {status}"))
    kind = str(detail.get("type") or "upstream_error")
    code = detail.get("code")
    if status in (401, 403):
        return GatewayError(502, f"upstream: {message}", "upstream_error", code="upstream_auth")
    retry = headers.get("retry-after")
    return GatewayError(
        status, message, kind, param=_text(detail.get("param")),
        code=_text(code), retry_after=_seconds(retry) if retry else None,
    )  # fmt: skip


def _error_detail(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"message": body[:ERROR_PREVIEW].decode("utf-8", "replace").strip()}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _seconds(value: str) -> float | None:
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Passing:
    """One upstream SSE stream passed on unchanged: a producer for `EventStreamResponse`
    (cancelled when the client leaves), which closes the upstream response at its end."""

    def __init__(
        self, fmt: Format, gw: Gateway, response: RawResponse, stack: AsyncExitStack,
        started: float,
    ) -> None:  # fmt: skip
        self.fmt, self.gw, self.response, self.stack = fmt, gw, response, stack
        self.started = started

    async def write(self, send: Send) -> None:
        metrics, name = self.gw.metrics, self.fmt.name
        metrics.active_streams.inc()
        first = True
        try:
            async for data in self.response.aiter_bytes():
                if first:
                    first = False
                    metrics.ttft.labels(name).observe(time.monotonic() - self.started)
                await send(body_message(data))
            metrics.latency.labels(name).observe(time.monotonic() - self.started)
        except Exception as exc:  # after the headers: the error travels as an event
            error = logged_error(_transport_error(exc), f"a relayed {name} stream")
            metrics.errors.labels(error.kind).inc()
            await send(body_message(self.fmt.stream_error(error)))
        finally:
            metrics.active_streams.dec()
            await self.stack.aclose()


# ---- the two formats -------------------------------------------------------------------

ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
    529: "overloaded_error",
}  # fmt: skip


def anthropic_error(error: GatewayError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`, with Anthropic's error types."""
    known = error.type in ANTHROPIC_TYPES.values() or error.type == "api_error"
    kind = error.type if known else ANTHROPIC_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.body()["error"]["message"]}}


def openai_error(error: GatewayError) -> dict[str, Any]:
    return error.body()


def anthropic_prompt(body: dict[str, Any]) -> Prompt:
    """The system prompt and the messages (text blocks count; the rest is small)."""
    messages = body.get("messages")
    prompt: Prompt = [{"content": body.get("system")}]
    if isinstance(messages, list):
        prompt += [m for m in messages if isinstance(m, Mapping)]
    return prompt


def responses_prompt(body: dict[str, Any]) -> Prompt:
    """The instructions and the input (a string or a list of items)."""
    items = body.get("input")
    prompt: Prompt = [{"content": body.get("instructions")}]
    if isinstance(items, list):
        prompt += [item for item in items if isinstance(item, Mapping)]
    else:
        prompt.append({"content": items})
    return prompt


ANTHROPIC = Format(
    "anthropic_messages", "/anthropic/v1/messages", root=True, x_api_key=True,
    error_body=anthropic_error, prompt=anthropic_prompt,
)  # fmt: skip
RESPONSES = Format(
    "responses", "/responses", root=False, x_api_key=False,
    error_body=openai_error, prompt=responses_prompt,
)  # fmt: skip
