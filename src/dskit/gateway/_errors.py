"""One error shape for every endpoint, and the mapping from dskit's errors to statuses.

Bodies follow the OpenAI/DeepSeek shape (`{"error": {"message", "type", "param",
"code"}}`) so OpenAI-compatible clients raise their usual exceptions. Upstream failures
keep the upstream's message (already scrubbed of keys by the client) but get a status
that tells the caller whose problem it is: an upstream 401 is the gateway operator's key,
so the caller sees 502, not 401.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from dskit.client._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ContextOverflowError,
    DSKitError,
    ValidationError,
    redact,
)
from dskit.gateway.upstreams._breaker import AllUpstreamsDownError

REDIS_RETRY_AFTER = 2.0
REDIS_BUSY_RETRY_AFTER = 1.0
logger = logging.getLogger("dskit.gateway")


@dataclass(slots=True)
class GatewayError(Exception):
    """An error answer: status, message and the OpenAI-style type/param/code."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": redact(self.message),
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.body())

    def headers(self) -> dict[str, str]:
        """`Retry-After` when there is a wait to tell; `WWW-Authenticate` on every 401."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return headers

    @property
    def kind(self) -> str:
        """A short label for the errors metric."""
        return self.code or self.type


def error_response(error: GatewayError) -> Response:
    return Response(
        error.encode(), status_code=error.status, media_type="application/json",
        headers=error.headers(),
    )  # fmt: skip


def validation_error(errors: Sequence[Any]) -> GatewayError:
    """The first schema problem as one readable sentence, naming the parameter."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request"))
    text = f"Invalid request: {param}: {message}" if param else f"Invalid request: {message}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem(s))"
    return GatewayError(422, text, param=param, code="invalid_request")


def not_found(what: str = "session") -> GatewayError:
    return GatewayError(404, f"No such {what}", "not_found_error", code="not_found")


def _upstream_status(exc: APIStatusError) -> GatewayError:
    status = exc.status_code
    message = f"upstream: {exc.message}"
    if status == 401:
        return GatewayError(502, message, "upstream_error", code="upstream_auth")
    if status == 402:
        return GatewayError(503, message, "upstream_error", code="upstream_balance")
    if status == 429:
        return GatewayError(
            429, message, "rate_limit_error", code="upstream_rate_limit",
            retry_after=exc.retry_after or 1.0,
        )  # fmt: skip
    if status in (400, 404, 422):
        return GatewayError(
            status, exc.message, "invalid_request_error", param=_upstream_param(exc),
            code=exc.code,
        )  # fmt: skip
    if status == 503:
        return GatewayError(503, message, "upstream_error", code="upstream_overloaded")
    return GatewayError(502, message, "upstream_error", code=f"upstream_{status}")


def _upstream_param(exc: APIStatusError) -> str | None:
    """The parameter the upstream's error body names, if any."""
    error = exc.body.get("error") if isinstance(exc.body, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return None if param is None else str(param)


def malformed_json(exc: Exception) -> GatewayError:
    """A body that is not JSON at all: 400, as DeepSeek answers it."""
    return GatewayError(
        400, f"Failed to parse the request body as JSON: {exc}", code="invalid_json"
    )


def from_exception(exc: BaseException) -> GatewayError:
    """The gateway error for any exception a request can meet."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ValidationError):
        return GatewayError(400, str(exc), param=exc.param, code="invalid_parameter")
    if isinstance(exc, ContextOverflowError):
        return GatewayError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, APIStatusError):
        return _upstream_status(exc)
    if isinstance(exc, APITimeoutError):
        return GatewayError(504, f"upstream: {exc}", "upstream_error", code="upstream_timeout")
    if isinstance(exc, APIConnectionError | APIError):
        return GatewayError(502, f"upstream: {exc}", "upstream_error", code="upstream_error")
    return _unavailable(exc) or _store_error(exc)


def logged_error(exc: BaseException, where: str) -> GatewayError:
    """`from_exception`, and an unexpected exception (a 500) logged with its traceback."""
    error = from_exception(exc)
    if error.status == 500 and not isinstance(exc, GatewayError):
        logger.error("unexpected error on %s", where, exc_info=exc)
    return error


def _unavailable(exc: BaseException) -> GatewayError | None:
    """Every upstream's breaker open, or Redis unreachable: a 503 with Retry-After."""

    if isinstance(exc, AllUpstreamsDownError):
        return GatewayError(
            503, "all upstreams are unavailable (circuit open) and no cached answer exists; "
            "retry later", "upstream_error", code="upstream_unavailable",
            retry_after=exc.retry_after,
        )  # fmt: skip
    return redis_down(exc)


def _store_error(exc: BaseException) -> GatewayError:
    from dskit.store import SessionConflictError, SessionNotFoundError, StoreError

    if isinstance(exc, SessionNotFoundError):
        return not_found()
    if isinstance(exc, SessionConflictError):
        return GatewayError(409, str(exc), "conflict_error", code="session_conflict")
    if isinstance(exc, StoreError | DSKitError):
        return GatewayError(503, f"store: {exc}", "store_error", code="store_error")
    return GatewayError(500, "internal error", "server_error", code="internal_error")


def redis_down(exc: BaseException) -> GatewayError | None:
    """A 503 for a Redis that cannot be reached, another for one that is only busy (every
    pooled connection in use for too long, a late reply); None: not a Redis problem."""
    try:
        from redis.exceptions import ConnectionError, TimeoutError
    except ImportError:  # pragma: no cover - redis is an optional extra
        return None
    from dskit.store import StoreBusyError, StoreUnavailableError
    from dskit.store._redis import is_busy

    if not isinstance(exc, ConnectionError | TimeoutError | StoreUnavailableError | StoreBusyError):
        return None
    if is_busy(exc):
        return GatewayError(
            503, "the shared store (Redis) is busy; retry shortly", "server_error",
            code="store_busy", retry_after=REDIS_BUSY_RETRY_AFTER,
        )  # fmt: skip
    return GatewayError(
        503, "the shared store (Redis) is unavailable; retry shortly", "server_error",
        code="store_unavailable", retry_after=REDIS_RETRY_AFTER,
    )  # fmt: skip


def outage_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean "something we depend on is away": answered as a 503 by the
    app's exception middleware (a catch-all `Exception` handler would re-raise them
    after answering, and the server would drop the connection)."""
    errors: list[type[Exception]] = [AllUpstreamsDownError]
    try:
        from redis.exceptions import ConnectionError, TimeoutError
    except ImportError:  # pragma: no cover - redis is an optional extra
        return tuple(errors)
    return (*errors, ConnectionError, TimeoutError)
