"""dskit: a Python toolkit for the DeepSeek chat API.

Public names are loaded on first use, so `import dskit` stays cheap (the HTTP stack, the
simulator and the gateway are imported only where they are used).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from dskit._version import __version__

# A library leaves its log to the application: without a handler of its own, Python's
# last-resort handler would print every warning (a retry, a resume) on stderr.
logging.getLogger("dskit").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from dskit._models import ModelInfo
    from dskit.client import (
        APIConnectionError,
        APIError,
        APIResponseError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        BatchError,
        BatchResult,
        ChatResult,
        Concurrency,
        ConfigError,
        ContextOverflowError,
        DSKitError,
        IncompleteStreamError,
        InsufficientBalanceError,
        InternalServerError,
        LimitChange,
        NotFoundError,
        RateLimitError,
        ServiceUnavailableError,
        ToolCall,
        ToolError,
        UnprocessableEntityError,
        Usage,
        ValidationError,
    )
    from dskit.client._async import AsyncDeepSeek
    from dskit.client._config import Limits, Pace, RetryPolicy, Timeout
    from dskit.client._sync import DeepSeek

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncChatSession",
    "AsyncDeepSeek",
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "BatchResult",
    "ChatResult",
    "ChatSession",
    "Concurrency",
    "ConfigError",
    "ContextOverflowError",
    "DSKitError",
    "DeepSeek",
    "IncompleteStreamError",
    "InsufficientBalanceError",
    "InternalServerError",
    "LimitChange",
    "Limits",
    "ModelInfo",
    "NotFoundError",
    "Pace",
    "RateLimitError",
    "RedisStore",
    "RetryPolicy",
    "SQLiteStore",
    "ServiceUnavailableError",
    "Timeout",
    "ToolCall",
    "ToolError",
    "UnprocessableEntityError",
    "Usage",
    "ValidationError",
    "__version__",
    "tool",
]

# where each public name lives: the errors and result types (every name of __all__ not
# listed here) come from dskit.client
_LAZY: dict[str, str] = {
    "DeepSeek": "dskit.client._sync",
    "AsyncDeepSeek": "dskit.client._async",
    "RetryPolicy": "dskit.client._config",
    "Limits": "dskit.client._config",
    "ModelInfo": "dskit._models",
    "Pace": "dskit.client._config",
    "Timeout": "dskit.client._config",
    "ChatSession": "dskit.session",
    "AsyncChatSession": "dskit.session",
    "tool": "dskit.session",
    "SQLiteStore": "dskit.store",
    "RedisStore": "dskit.store",
}
_LAZY.update(
    (name, "dskit.client") for name in __all__ if name not in _LAZY and name != "__version__"
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dskit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
