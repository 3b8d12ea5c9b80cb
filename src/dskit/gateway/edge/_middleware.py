"""One pure-ASGI middleware: request ids, the body size limit, metrics and the access log.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched and the
per-request cost stays a few attribute lookups.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dskit.gateway._errors import GatewayError
from dskit.gateway._logging import request_id_var
from dskit.gateway._metrics import Metrics

logger = logging.getLogger("dskit.gateway.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(Exception):
    pass


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        started, state = time.monotonic(), {"status": 500, "started": False}
        try:
            await self._serve(scope, receive, send, request_id, state)
        finally:
            self._record(scope, state["status"], started)
            request_id_var.reset(token)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, state: dict[str, Any]
    ) -> None:
        header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            if state.get("too_large"):  # the app saw a broken body: answer 413 instead
                if message["type"] == "http.response.start":
                    await self._too_large(send, state, header)
                return
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        if _declared_length(scope) > self.max_body:
            await self._too_large(send, state, header)
            return
        try:
            await self.app(scope, self._limited(receive, state), send_wrapper)
        except BodyTooLarge:
            if not state["started"]:
                await self._too_large(send, state, header)

    def _limited(self, receive: Receive, state: dict[str, Any]) -> Receive:
        """Count body bytes as they arrive (a chunked body declares no length)."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    state["too_large"] = True
                    raise BodyTooLarge
            return message

        return limited

    async def _too_large(
        self, send: Send, state: dict[str, Any], request_id: tuple[bytes, bytes]
    ) -> None:
        error = GatewayError(
            413, f"request body too large (limit {self.max_body} bytes)", code="body_too_large"
        )
        body = error.encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            request_id,
        ]
        state["status"], state["started"] = 413, True
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.requests.labels(path, scope["method"], str(status)).inc()
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s %s %d %.1fms", scope["method"], path, status,
                (time.monotonic() - started) * 1000,
            )  # fmt: skip


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
