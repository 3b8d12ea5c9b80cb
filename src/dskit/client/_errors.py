"""The one exception tree of dskit.

    DSKitError
    ├── ValidationError              bad parameters, raised before any request is sent
    ├── ContextOverflowError         a conversation cannot fit the model's window
    ├── ConfigError                  missing API key, unreadable config
    ├── APIError                     anything that came from (or failed to reach) the API
    │   ├── APIConnectionError       connect/read failures, dropped connections
    │   │   └── APITimeoutError      connect, read, idle or total deadline exceeded
    │   ├── APIStatusError           an HTTP error status; .status_code, .message, .body
    │   │   ├── BadRequestError          400
    │   │   ├── AuthenticationError      401
    │   │   ├── InsufficientBalanceError 402
    │   │   ├── NotFoundError            404
    │   │   ├── UnprocessableEntityError 422
    │   │   ├── RateLimitError           429
    │   │   └── InternalServerError      5xx (ServiceUnavailableError for 503)
    │   ├── APIResponseError         a body that is not what the wire format promises
    │   └── IncompleteStreamError    a stream that ended early and could not be resumed;
    │                                .partial holds what arrived (never passed off as whole)
    └── ToolError                    a tool could not be run (used by sessions)

Messages never contain the API key: `redact()` scrubs anything that looks like one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dskit.client._types import ChatResult

_KEY_PATTERN = re.compile(r"(sk-|Bearer\s+)[A-Za-z0-9_\-]{6,}")
MIN_SECRET = 8
_known_secrets: set[str] = set()  # every client's key: redacted wherever redact() runs


def remember_secret(secret: str | None) -> None:
    """Redact `secret` from now on in every `redact()` call of this process (a client's
    API key, whatever its shape: errors, SSE error events and logs all pass redact())."""
    if secret and len(secret) >= MIN_SECRET:
        _known_secrets.add(secret)


def redact(text: str, *secrets: str | None) -> str:
    """Replace API keys (given ones, remembered ones and anything shaped like one) with
    `***`."""
    for secret in (*secrets, *_known_secrets):
        if secret and secret in text:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "***", text)


class DSKitError(Exception):
    """Base of every error dskit raises."""


class ValidationError(DSKitError, ValueError):
    """A parameter is invalid; raised before anything is sent."""

    def __init__(self, message: str, *, param: str | None = None, hint: str = "") -> None:
        super().__init__(f"{message.rstrip('.')}. {hint}" if hint else message)
        self.message = message
        self.param = param
        self.hint = hint  # how to fix it, when there is more to say than the message


class ContextOverflowError(DSKitError):
    """The conversation cannot be made to fit the model's context window."""


class ConfigError(DSKitError):
    """Configuration is missing or unsafe (for example no API key)."""


class ToolError(DSKitError):
    """A tool failed or could not be called."""


class APIError(DSKitError):
    """Something went wrong talking to the API."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class APIConnectionError(APIError):
    """The request could not be sent or its response could not be read.

    `retryable` is False for failures that a new attempt cannot mend, such as a server
    certificate that fails verification.
    """

    def __init__(
        self, message: str, *, request_id: str | None = None, retryable: bool = True
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.retryable = retryable


class APITimeoutError(APIConnectionError):
    """A connect, read, idle or total timeout expired."""


class APIResponseError(APIError):
    """The server answered with something that is not valid for the wire format."""


class IncompleteStreamError(APIError):
    """A stream ended before its answer was complete and could not be resumed."""

    def __init__(self, message: str, *, partial: ChatResult, cause: str) -> None:
        super().__init__(message)
        self.partial = partial
        self.cause = cause


class APIStatusError(APIError):
    """The API answered with an error status."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        error_type: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code}: {message}", request_id=request_id)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.error_type = error_type
        self.code = code
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class InsufficientBalanceError(APIStatusError):
    status_code = 402


class NotFoundError(APIStatusError):
    status_code = 404


class UnprocessableEntityError(APIStatusError):
    status_code = 422


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    status_code = 500


class ServiceUnavailableError(InternalServerError):
    status_code = 503


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientBalanceError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return InternalServerError if status_code >= 500 else APIStatusError
