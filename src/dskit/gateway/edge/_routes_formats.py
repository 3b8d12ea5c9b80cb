"""`POST /anthropic/v1/messages` (+ `/count_tokens`) and `POST /v1/responses` (+
`/responses`): the Anthropic Messages and OpenAI Responses formats, relayed to the
upstream's own endpoints (`_format_relay.py`). The bodies are passed on as they are, so
the schema documents them loosely (the fields DeepSeek supports) and parses nothing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials

from dskit.gateway._schemas import (
    AnthropicCountTokensRequest,
    AnthropicErrorResponse,
    AnthropicMessagesRequest,
    ErrorResponse,
    ResponsesRequest,
)
from dskit.gateway.edge._deps import GatewayDep, bearer
from dskit.gateway.edge._format_relay import ANTHROPIC, RESPONSES, relay

router = APIRouter()
x_api_key = APIKeyHeader(
    name="x-api-key", auto_error=False,
    description="A gateway API key, as the anthropic SDK sends it",
)  # fmt: skip
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
XApiKey = Annotated[str | None, Security(x_api_key)]
ERRORS = (400, 401, 404, 413, 422, 429, 500, 502, 503, 504)


def _body(model: Any) -> dict[str, Any]:
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": schema}}


def _responses(ok: str, stream: bool, error_model: Any) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    documented: dict[int | str, dict[str, Any]] = {200: {"description": ok, "content": content}}
    for status in ERRORS:
        documented[status] = {"model": error_model, "description": "An error"}
    return documented


MESSAGE_DOC = (
    "A `message` object, or with `stream: true` Anthropic's SSE events (`message_start`, "
    "`content_block_*`, `ping`, `message_delta`, `message_stop`; no `[DONE]`)."
)
RESPONSE_DOC = (
    "A `response` object, or with `stream: true` SSE events `response.*` with "
    "`sequence_number`, ending with `response.completed` (or `.incomplete`, `.failed`; "
    "no `[DONE]`)."
)


@router.post(
    "/anthropic/v1/messages", tags=["anthropic"], response_class=Response,
    openapi_extra=_body(AnthropicMessagesRequest),
    responses=_responses(MESSAGE_DOC, True, AnthropicErrorResponse),
)  # fmt: skip
async def anthropic_messages(
    request: Request, gw: GatewayDep, credentials: Bearer, key: XApiKey
) -> Response:
    """Anthropic Messages (`anthropic.Anthropic(base_url=<gateway>/anthropic)`), relayed
    to the upstream's `/anthropic/v1/messages`. A gateway key in `x-api-key` or
    `Authorization: Bearer` (Bearer wins); errors in Anthropic's shape."""
    return await relay(ANTHROPIC, gw, request)


@router.post(
    "/anthropic/v1/messages/count_tokens", tags=["anthropic"], response_class=Response,
    openapi_extra=_body(AnthropicCountTokensRequest),
    responses=_responses("`{\"input_tokens\": n}`", False, AnthropicErrorResponse),
)  # fmt: skip
async def anthropic_count_tokens(
    request: Request, gw: GatewayDep, credentials: Bearer, key: XApiKey
) -> Response:
    """The prompt tokens a Messages request would count, from the upstream."""
    return await relay(ANTHROPIC, gw, request, "/count_tokens")


@router.post(
    "/v1/responses", tags=["responses"], response_class=Response,
    openapi_extra=_body(ResponsesRequest),
    responses=_responses(RESPONSE_DOC, True, ErrorResponse),
)  # fmt: skip
async def responses(request: Request, gw: GatewayDep, credentials: Bearer) -> Response:
    """OpenAI Responses (`client.responses.create`), stateless, relayed to the
    upstream's `/responses`. Errors in the OpenAI shape."""
    return await relay(RESPONSES, gw, request)


@router.post(
    "/responses", tags=["responses"], response_class=Response,
    openapi_extra=_body(ResponsesRequest),
    responses=_responses(RESPONSE_DOC, True, ErrorResponse),
)  # fmt: skip
async def responses_root(request: Request, gw: GatewayDep, credentials: Bearer) -> Response:
    """`POST /v1/responses` under DeepSeek's own path (for a base URL without `/v1`)."""
    return await relay(RESPONSES, gw, request)
