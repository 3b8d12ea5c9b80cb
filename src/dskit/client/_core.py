"""What the sync and async clients share: configuration, request building, error mapping.

Nothing here does I/O. The shells (`_sync.py`, `_async.py`) send what this module builds
and hand back what they receive.
"""

from __future__ import annotations

import difflib
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import orjson

from dskit._models import DEFAULT_MODEL, migrate
from dskit._validate import EFFORT_ALIASES, check_chat_request, check_fim_request, is_integer
from dskit._version import __version__
from dskit.client._accumulate import Seed
from dskit.client._config import (
    DEFAULT_BASE_URL,
    Clock,
    Limits,
    Pace,
    RetryPolicy,
    SystemClock,
    Timeout,
)
from dskit.client._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ConfigError,
    ValidationError,
    redact,
    remember_secret,
    status_error_class,
)
from dskit.client._models import ModelCache
from dskit.client._types import Message

logger = logging.getLogger("dskit.client")

Messages = str | Sequence[Mapping[str, Any]]

# Parameters forwarded to the API as they are (None means: leave it out).
API_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "user_id",
)


class ChatParams(TypedDict, total=False):
    """Keyword parameters of `chat()` and `stream()`.

    `thinking` switches thinking mode (the API's default is on) and `effort` sets how
    hard it thinks ("low", "high", "max"; the API's aliases such as "medium" map).
    """

    model: str
    thinking: bool | None
    effort: str | None
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    stop: str | list[str] | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    response_format: dict[str, Any] | None
    frequency_penalty: float | None
    presence_penalty: float | None
    logprobs: bool | None
    top_logprobs: int | None
    user_id: str | None
    extra_body: dict[str, Any] | None
    extra_headers: dict[str, str] | None
    timeout: Timeout | float | None
    retry: RetryPolicy | None
    max_resumes: int | None
    pace: Pace | None


Timeouts = tuple[float | None, float | None]  # (connect, read) for one request


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """One request for a shell to send."""

    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class CallOptions:
    """The per-call settings after merging call arguments over client defaults."""

    timeout: Timeout
    retry: RetryPolicy
    max_resumes: int
    pace: Pace | None
    headers: dict[str, str]


@dataclass(slots=True)
class ClientCore:
    """Configuration and pure helpers shared by `DeepSeek` and `AsyncDeepSeek`."""

    api_key: str = field(repr=False)
    base_url: str
    timeout: Timeout
    retry: RetryPolicy
    max_resumes: int
    pace: Pace | None
    default_headers: dict[str, str]
    clock: Clock
    limits: Limits
    models: ModelCache = field(default_factory=ModelCache, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        api_key: str | None,
        base_url: str | None,
        timeout: Timeout | float | None,
        retry: RetryPolicy | None,
        max_resumes: int,
        pace: Pace | None,
        default_headers: Mapping[str, str] | None,
        clock: Clock | None,
        limits: Limits | None = None,
    ) -> ClientCore:
        key = api_key if api_key is not None else os.environ.get("DEEPSEEK_API_KEY", "")
        if not key.strip():
            raise ConfigError(
                "No DeepSeek API key: pass DeepSeek(api_key=...) or set the DEEPSEEK_API_KEY "
                "environment variable (get a key at https://platform.deepseek.com/api_keys)."
            )
        remember_secret(key.strip())
        url = base_url or os.environ.get("DEEPSEEK_BASE_URL") or DEFAULT_BASE_URL
        if max_resumes < 0:
            raise ValidationError("max_resumes must be 0 or more", param="max_resumes")
        return cls(
            api_key=key.strip(),
            base_url=url.rstrip("/"),
            timeout=Timeout.coerce(timeout),
            retry=retry or RetryPolicy(),
            max_resumes=max_resumes,
            pace=pace,
            default_headers=dict(default_headers or {}),
            clock=clock or SystemClock(),
            limits=limits or Limits(),
        )

    def describe(self, class_name: str) -> str:
        """The repr of a client: never the key."""
        return f"{class_name}(base_url={self.base_url!r}, api_key='***')"

    # ---- URLs and headers ----------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def root_url(self, path: str) -> str:
        """Endpoints that live beside `/v1`, never under it (beta, the Anthropic format)."""
        return f"{self.base_url.removesuffix('/v1')}{path}"

    def beta_url(self, path: str) -> str:
        return self.root_url(f"/beta{path}")

    def headers(
        self, extra: Mapping[str, str] | None = None, *, stream: bool = False
    ) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": f"dskit/{__version__}",
            **self.default_headers,
        }
        headers.update(extra or {})
        return headers

    def options(self, params: ChatParams) -> CallOptions:
        resumes = params.get("max_resumes")
        return CallOptions(
            timeout=Timeout.coerce(params.get("timeout") or self.timeout),
            retry=params.get("retry") or self.retry,
            max_resumes=self.max_resumes if resumes is None else resumes,
            pace=params.get("pace") or self.pace,
            headers=dict(params.get("extra_headers") or {}),
        )

    def redact(self, text: str) -> str:
        return redact(text, self.api_key)


def normalize_messages(messages: Messages) -> list[Message]:
    """A plain string is one user message; mappings are copied so callers keep theirs."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence):
        raise ValidationError(
            "messages must be a string or a list of message dicts", param="messages"
        )
    copied: list[Message] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValidationError(f"messages[{index}] must be a dict", param=f"messages[{index}]")
        copied.append(dict(message))
    return copied


CHAT_PARAM_NAMES = frozenset(ChatParams.__annotations__)
_migrated: set[str] = set()


def check_param_names(params: Mapping[str, Any]) -> None:
    """A misspelt keyword (`temprature=0.5`) is an error naming the closest valid one."""
    for name in params:
        if name not in CHAT_PARAM_NAMES:
            close = difflib.get_close_matches(name, sorted(CHAT_PARAM_NAMES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValidationError(f"unknown parameter {name!r}{hint}", param=name)


def resolve_model(model: str | None) -> tuple[str, bool | None]:
    """The model name to send, and the thinking switch a retired name implied.

    `deepseek-chat` / `deepseek-reasoner` were retired on 2026-07-24; they become
    `deepseek-flash` with thinking off / on, said once per process at INFO.
    """
    name, implied = migrate(model or DEFAULT_MODEL)
    if implied is not None and model not in _migrated:
        _migrated.add(str(model))
        logger.info(
            "model %s was retired by DeepSeek on 2026-07-24; using %s with thinking %s",
            model, name, "on" if implied else "off",
        )  # fmt: skip
    return name, implied


def thinking_fields(thinking: Any, effort: Any) -> dict[str, Any]:
    """The request fields for the `thinking=` and `effort=` arguments."""
    fields: dict[str, Any] = {}
    if thinking is not None:
        if not isinstance(thinking, bool):
            raise ValidationError("thinking must be True or False", param="thinking")
        fields["thinking"] = {"type": "enabled" if thinking else "disabled"}
    if effort is not None:
        if effort not in EFFORT_ALIASES:
            levels = ", ".join(sorted(EFFORT_ALIASES))
            raise ValidationError(f"effort must be one of {levels}", param="effort")
        fields["reasoning_effort"] = EFFORT_ALIASES[effort]
    return fields


def chat_body(messages: Messages, params: ChatParams, *, stream: bool = True) -> dict[str, Any]:
    """The JSON body of a chat request, validated before anything is sent."""
    check_param_names(params)
    model, implied = resolve_model(params.get("model"))
    body: dict[str, Any] = {"model": model}
    body["messages"] = normalize_messages(messages)
    for name in API_PARAMS:
        value = params.get(name)
        if value is not None:
            body[name] = value
    thinking = params.get("thinking")
    body.update(thinking_fields(implied if thinking is None else thinking, params.get("effort")))
    body.update(params.get("extra_body") or {})
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    problem = check_chat_request(body)
    if problem is not None:
        raise ValidationError(problem.message, param=problem.param, hint=problem.hint)
    return body


def check_chat_params(params: Mapping[str, Any]) -> None:
    """Parameters to be kept for later requests (a session's), under the request rules
    now: a bad value stored would make every later request fail."""
    chat_body([{"role": "user", "content": " "}], cast(ChatParams, dict(params)))


def continuation_seed(content: str, reasoning: str | None, pieces: int) -> Seed:
    """The start of an answer for `continue_stream`, checked before anything is sent."""
    if not isinstance(content, str):
        raise ValidationError("content must be a string", param="content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise ValidationError("reasoning must be a string or None", param="reasoning")
    if not is_integer(pieces) or pieces < 0:
        raise ValidationError("pieces must be an integer, 0 or more", param="pieces")
    return Seed(content, reasoning, pieces)


def encode(body: Mapping[str, Any]) -> bytes:
    """The JSON of a request body; what JSON cannot carry is a ValidationError, not I/O."""
    try:
        return orjson.dumps(body)
    except TypeError as exc:  # orjson.JSONEncodeError: huge ints, non-JSON values
        raise ValidationError(f"The request cannot be encoded as JSON: {exc}") from exc


# ---- errors -------------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return _seconds_until_http_date(value)


def _seconds_until_http_date(value: str) -> float | None:
    import email.utils
    import time

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_status(status: int, headers: Mapping[str, str], body: bytes) -> APIStatusError:
    """The typed exception for an error response, keeping the server's message (without
    any client's key, whatever its shape: `ClientCore.create` remembers each for
    `redact`)."""
    message, error_type, code, parsed = _error_details(body)
    if not message:
        message = f"HTTP {status} with an empty body"
    return status_error_class(status)(
        redact(message),
        status_code=status,
        body=parsed,
        error_type=error_type,
        code=code,
        request_id=headers.get("x-ds-trace-id") or headers.get("x-request-id"),
        retry_after=parse_retry_after(headers),
    )


def _error_details(body: bytes) -> tuple[str, str | None, str | None, Any]:
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text[:2000], None, None, text
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        return message, error.get("type"), error.get("code"), parsed
    if isinstance(error, str):
        return error, None, None, parsed
    return text[:2000], None, None, parsed


def transport_error(exc: BaseException, redactor: ClientCore) -> APIError:
    """Map an httpx2 exception (or ours) to our tree."""
    if isinstance(exc, APIError):
        return exc
    import httpx2

    detail = redactor.redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, httpx2.TimeoutException):
        return APITimeoutError(f"Request timed out ({detail})")
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return APIConnectionError(
            f"TLS certificate verification failed ({detail})", retryable=False
        )
    return APIConnectionError(f"Connection error ({detail})")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# ---- other endpoints ----------------------------------------------------------------


def get_request(core: ClientCore, path: str) -> HTTPRequest:
    return HTTPRequest("GET", core.url(path), core.headers())


FIM_PARAMS = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "echo",
    "logprobs",
    "frequency_penalty",
    "presence_penalty",
)


def fim_request(
    core: ClientCore, prompt: str, suffix: str | None, params: Mapping[str, Any]
) -> HTTPRequest:
    """A fill-in-the-middle request to the beta completions endpoint, validated first."""
    unknown = set(params) - {*FIM_PARAMS, "model"}
    if unknown:
        raise ValidationError(f"Unknown FIM parameter(s): {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {"model": params.get("model") or DEFAULT_MODEL, "prompt": prompt}
    if suffix is not None:
        body["suffix"] = suffix
    body.update({k: v for k, v in params.items() if k in FIM_PARAMS and v is not None})
    problem = check_fim_request(body)
    if problem is not None:
        raise ValidationError(problem.message, param=problem.param)
    return HTTPRequest("POST", core.beta_url("/completions"), core.headers(), encode(body))
