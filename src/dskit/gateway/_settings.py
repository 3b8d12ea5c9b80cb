"""The gateway's configuration: one typed, frozen object instead of loose keyword arguments.

`GatewaySettings.from_env()` reads `DSKIT_GATEWAY_*` variables (the CLI flags win over
them), so a container can be configured without a command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from dskit._net import is_loopback
from dskit.gateway.access._matrix import AuthConfig
from dskit.gateway.backends._redis_log import DEFAULT_LEASE, DEFAULT_NAMESPACE
from dskit.gateway.upstreams._breaker import BreakerSettings, parse_upstreams

ENV_PREFIX = "DSKIT_GATEWAY_"
NOT_FROM_ENV = (
    "allowed_hosts",
    "rate_limit",
    "callbacks",
    "api_key",
    "tokens_limit",
    "fallbacks",
    "breaker",
    "auth",
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per principal: `rate` requests per second, bursts of `burst`."""

    rate: float
    burst: int = 10

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class CallbackSettings:
    """Where async results may be POSTed, how they are signed, how often retried."""

    allow_hosts: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    max_attempts: int = 5
    base_delay: float = 0.5
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything `create_app` needs.

    upstream: the DeepSeek base URL (None: DEEPSEEK_BASE_URL, else the official API when a
    key is set, else the built-in simulator started in-process).
    api_key: the upstream key (None: DEEPSEEK_API_KEY). Never logged, never sent to clients.
    store: None (SQLite at the default path), a file path, `sqlite:///path`, `memory`, or
    `redis://...`.
    keys_path: the SQLite file of gateway API keys and session ownership (None: beside the
    default session store).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 0  # the gRPC service (`_grpc.py`) on `host`; 0: none
    upstream: str | None = None
    api_key: str | None = field(default=None, repr=False)
    store: str | None = None
    keys_path: str | None = None
    # Issuers of bearer JWTs, the roles → permissions matrix, the keys' role
    # (`--auth-config FILE`, `_access.load_auth_config`; None: keys only, default roles).
    auth: AuthConfig | None = None
    allow_insecure_bind: bool = False
    log_format: Literal["text", "json"] = "text"
    max_body_bytes: int = 1024 * 1024
    # The edge (see _server.py and _edge.py): request heads, Host names, sim fault headers.
    max_head_bytes: int = 64 * 1024
    head_timeout_seconds: float = 10.0
    allowed_hosts: tuple[str, ...] = ()
    forward_sim_headers: bool = False
    key_check_seconds: float = 2.0
    heartbeat_seconds: float = 15.0
    # Adaptive flow (`_flow.py`): a client that falls behind gets pending deltas merged
    # into fewer, larger events (SSE: measured by what its connection could not send;
    # WebSocket: by its acks). False: one event per logged delta, whatever the pace.
    adaptive_flow: bool = True
    sse_retry_ms: int = 2000
    max_wait_seconds: float = 60.0
    answer_ttl_seconds: float = 900.0
    # A single instance keeps a growing answer in the store at most this often (as
    # `ChatSession` does), so a killed gateway leaves it there marked incomplete; 0: only
    # at its end. A fleet (a shared log) keeps it in the log, and another instance ends it.
    partial_save_seconds: float = 0.5
    # An answer whose model output calls the session's client-side tools waits this long
    # for their results (WebSocket, gRPC or `POST .../tool_results`), then ends with
    # `tool_timeout`.
    tool_result_timeout_seconds: float = 300.0
    upstream_max_retries: int = 3
    upstream_max_resumes: int = 3
    rate_limit: RateLimit | None = None
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    # Many instances (docs/scaling.md): `redis` moves the stream log, rate limits, cache and
    # (unless `store` says otherwise) sessions into one Redis shared by every instance.
    redis: str | None = None
    redis_namespace: str = DEFAULT_NAMESPACE
    lease_seconds: float = DEFAULT_LEASE
    takeover_interval: float = 1.0
    tokens_limit: RateLimit | None = None
    fallbacks: tuple[str, ...] = ()
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    cache_ttl_seconds: float = 3600.0
    semantic_cache: bool = False
    semantic_threshold: float = 0.92

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be 'text' or 'json'")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.max_head_bytes < 1024 or self.head_timeout_seconds <= 0:
            raise ValueError("max_head_bytes must be >= 1024 and head_timeout_seconds positive")
        if not 0 <= self.grpc_port <= 65535:
            raise ValueError("grpc_port must be 0 (no gRPC) or a port number")
        if self.heartbeat_seconds <= 0 or self.max_wait_seconds <= 0:
            raise ValueError("heartbeat_seconds and max_wait_seconds must be positive")
        if not 0 <= self.partial_save_seconds <= 1:
            raise ValueError("partial_save_seconds must be in [0, 1] (0: save at the end only)")
        if not 0 < self.tool_result_timeout_seconds <= 86_400:
            raise ValueError("tool_result_timeout_seconds must be in (0, 86400]")
        if self.lease_seconds < 0.1 or self.takeover_interval <= 0:
            raise ValueError("lease_seconds must be >= 0.1 and takeover_interval positive")
        parse_upstreams(self.upstream, self.fallbacks)  # a bad --fallback fails here, not later

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    def with_overrides(self, **overrides: Any) -> GatewaySettings:
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_env(cls, **overrides: Any) -> GatewaySettings:
        """Settings from `DSKIT_GATEWAY_<FIELD>` variables, then `overrides` on top."""
        values: dict[str, Any] = {}
        defaults = cls()
        for spec in fields(cls):
            raw = os.environ.get(ENV_PREFIX + spec.name.upper())
            if raw is not None and spec.name not in NOT_FROM_ENV:
                values[spec.name] = _coerce(raw, getattr(defaults, spec.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _coerce(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw
