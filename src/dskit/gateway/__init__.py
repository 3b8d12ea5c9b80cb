"""The gateway: chat for web and mobile front ends over SSE, with resume (`dskit serve`).

    from dskit.gateway import create_app, GatewaySettings
    app = create_app(GatewaySettings(store="memory"))   # any ASGI server runs it

Seams for running many instances (Redis): `StreamLog` (answers' numbered events; a
fleet's is a `SharedLog`, which another instance takes answers over from),
`RateLimiter` (token buckets), `dskit.store.SessionStore` (sessions) and `KeyBackend`
(keys and ownership: `KeyStore` in SQLite). Their Redis implementations
(`RedisStreamLog`, `RedisRateLimiter`, `RedisKeyStore`) are what
`GatewaySettings(redis=URL)` / `dskit serve --redis URL` selects (docs/scaling.md).
"""

from dskit.gateway._settings import CallbackSettings, GatewaySettings, RateLimit
from dskit.gateway.answers._callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from dskit.gateway.backends._keys import KeyBackend, KeyInfo, KeyStore, default_keys_path
from dskit.gateway.backends._limits import MemoryRateLimiter, NoRateLimit, RateLimiter
from dskit.gateway.backends._log import LogEntry, LogSlice, MemoryStreamLog, SharedLog, StreamLog
from dskit.gateway.backends._redis_keys import RedisKeyStore
from dskit.gateway.backends._redis_limit import RedisRateLimiter
from dskit.gateway.backends._redis_log import RedisLogSettings, RedisStreamLog
from dskit.gateway.edge._app import create_app
from dskit.gateway.upstreams._breaker import BreakerSettings, CircuitBreaker, Upstream

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "BreakerSettings",
    "CallbackSettings",
    "CircuitBreaker",
    "GatewaySettings",
    "KeyBackend",
    "KeyInfo",
    "KeyStore",
    "LogEntry",
    "LogSlice",
    "MemoryRateLimiter",
    "MemoryStreamLog",
    "NoRateLimit",
    "RateLimit",
    "RateLimiter",
    "RedisKeyStore",
    "RedisLogSettings",
    "RedisRateLimiter",
    "RedisStreamLog",
    "SharedLog",
    "StreamLog",
    "Upstream",
    "create_app",
    "default_keys_path",
    "sign",
    "verify",
]
