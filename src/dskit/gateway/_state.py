"""The gateway's parts, wired together once per app: upstream client, stores, log, metrics.

Upstream choice (said in the log at startup and shown by the web page):
- a DeepSeek key (settings or DEEPSEEK_API_KEY): the given upstream, else the official API;
- no key but an upstream URL: that URL with a placeholder key (a simulator or a proxy);
- neither: the built-in simulator, started in-process on a free loopback port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import TYPE_CHECKING, Any, Literal

import orjson

from dskit.client._async import AsyncDeepSeek
from dskit.client._config import Limits, RetryPolicy, Timeout
from dskit.client._errors import ConfigError
from dskit.gateway._access import Authority
from dskit.gateway._answers import AnswerRunner
from dskit.gateway._auth import LOCAL_PRINCIPAL, KeyBackend
from dskit.gateway._breaker import UpstreamChooser, parse_upstreams
from dskit.gateway._callbacks import CallbackSender
from dskit.gateway._metrics import Metrics
from dskit.gateway._ratelimit import RateLimiter, make_rate_limiter
from dskit.gateway._redis_keys import open_keys
from dskit.gateway._redis_log import RedisStreamLog
from dskit.gateway._scale import (
    CacheFront,
    RedisParts,
    UpstreamPool,
    breaker_gauge,
    make_cache,
    make_semantic,
    token_limiter,
)
from dskit.gateway._settings import GatewaySettings
from dskit.gateway._streamlog import MemoryStreamLog, StreamLog
from dskit.gateway._takeover import TakeoverLoop
from dskit.gateway._tool_results import ToolResults, make_tool_results
from dskit.store import SessionStore, open_store
from dskit.store._model import redact_url

if TYPE_CHECKING:
    from dskit.gateway._jwt import Clock
    from dskit.sim import SimServer

logger = logging.getLogger("dskit.gateway")
PLACEHOLDER_KEY = "sk-dskit-gateway-no-key"
MAX_UPSTREAM_CONNECTIONS = 10_000
UpstreamMode = Literal["deepseek", "custom", "simulator"]


def _redis_parts(settings: GatewaySettings) -> RedisParts | None:
    if not settings.redis:
        return None
    return RedisParts.build(
        settings.redis, namespace=settings.redis_namespace, lease_seconds=settings.lease_seconds,
        answer_ttl=settings.answer_ttl_seconds, rate_limit=settings.rate_limit,
    )  # fmt: skip


class Gateway:
    """Everything the routes use; `start()`/`stop()` run in the app's lifespan."""

    def __init__(
        self, settings: GatewaySettings, *, store: SessionStore | None = None,
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.authority = Authority(settings.auth, clock=clock)  # roles, keys' role, issuers
        self.metrics = Metrics()
        self.redis = _redis_parts(settings)
        spec = settings.store or settings.redis
        self.store: SessionStore = store if store is not None else open_store(spec)
        self.keys: KeyBackend = open_keys(
            settings.redis, settings.redis_namespace, settings.keys_path
        )
        self.auth_required = self.authority.verifier is not None or self.keys.has_keys()
        self.auth_checked = 0.0
        self.log: StreamLog = (
            self.redis.log if self.redis else MemoryStreamLog(ttl=settings.answer_ttl_seconds)
        )
        self.limiter: RateLimiter = (
            self.redis.limiter
            if self.redis and self.redis.limiter
            else make_rate_limiter(settings.rate_limit)
        )
        self.token_limiter = token_limiter(
            self.redis, settings.tokens_limit, settings.redis_namespace
        )
        semantic = make_semantic(
            settings.semantic_cache, settings.semantic_threshold, settings.cache_ttl_seconds
        )
        self.cache = CacheFront(
            make_cache(self.redis), settings.cache_ttl_seconds, self.metrics, semantic
        )
        # paused answers' mailboxes for client-side tool results (shared with --redis)
        self.tool_results: ToolResults = make_tool_results(self.redis)
        self.pool: UpstreamPool | None = None
        self.takeover: TakeoverLoop | None = None
        self.runner = AnswerRunner(self)
        self.callbacks = CallbackSender(settings.callbacks)
        self.sim: SimServer | None = None
        self.mode: UpstreamMode = "simulator"
        self._client: AsyncDeepSeek | None = None
        self._tls: ssl.SSLContext | None = None

    @property
    def client(self) -> AsyncDeepSeek:
        """The upstream client: one connection pool, whose kept-alive connections the
        next request reuses."""
        if self._client is None:
            raise ConfigError("the gateway is not started")
        return self._client

    @property
    def ready(self) -> bool:
        return self._client is not None

    def principal_for(self, key: str | None) -> str | None:
        """The caller's principal: from a valid key, or `local` when auth is off."""
        if not self.auth_required:
            return LOCAL_PRINCIPAL
        return self.keys.principal_for(key) if key else None

    async def start(self) -> None:
        key = self.settings.api_key or os.environ.get("DEEPSEEK_API_KEY") or None
        base_url = self.settings.upstream or os.environ.get("DEEPSEEK_BASE_URL") or None
        if key:
            self.mode = "deepseek" if base_url is None else "custom"
        elif base_url:
            self.mode, key = "custom", PLACEHOLDER_KEY
        else:
            self.mode, key, base_url = "simulator", PLACEHOLDER_KEY, await self._start_sim()
        self._client = self._new_client(key, base_url)
        self._start_scale(key)
        self._announce()

    def _start_scale(self, key: str) -> None:
        """Upstreams with breakers and fallbacks, the takeover loop."""
        primary = self.client.base_url
        upstreams = parse_upstreams(primary, self.settings.fallbacks)
        sources: dict[str | None, AsyncDeepSeek] = {primary: self.client}
        for upstream in upstreams:
            if upstream.base_url not in sources:
                sources[upstream.base_url] = self._new_client(key, upstream.base_url)
        chooser = UpstreamChooser(upstreams, self.settings.breaker)
        self.pool = UpstreamPool(chooser, sources, on_retry=self.metrics.retries.inc)
        breaker_gauge(self.metrics, self.pool)
        if isinstance(self.log, RedisStreamLog):
            self.takeover = TakeoverLoop(
                self.log, self.runner.worker, self.runner.adopt, self.settings.takeover_interval
            )
            self.takeover.start()

    def _new_client(self, key: str, base_url: str | None) -> AsyncDeepSeek:
        """One upstream client. They share one TLS context: building one loads the CA
        bundle (~40 ms), once for the primary and every fallback."""
        if self._tls is None:
            import httpx2

            self._tls = httpx2.create_ssl_context()
        most = MAX_UPSTREAM_CONNECTIONS
        return AsyncDeepSeek(
            api_key=key, base_url=base_url, verify=self._tls,
            limits=Limits(max_connections=most, max_keepalive_connections=most),
            retry=RetryPolicy(max_retries=self.settings.upstream_max_retries, base_delay=0.5),
            max_resumes=self.settings.upstream_max_resumes,
            timeout=Timeout(connect=10.0, read=660.0, idle=300.0),
        )  # fmt: skip

    async def _start_sim(self) -> str:
        from dskit.sim import SimServer

        self.sim = SimServer()
        await asyncio.to_thread(self.sim.start)
        return self.sim.base_url

    def _announce(self) -> None:
        if self.mode == "simulator":
            logger.warning(
                "no DEEPSEEK_API_KEY: answers come from the built-in OFFLINE SIMULATOR at %s "
                "(set DEEPSEEK_API_KEY to use DeepSeek)", self.client.base_url,
            )  # fmt: skip
        else:
            logger.info("upstream: %s (%s)", self.client.base_url, self.mode)
        for fallback in self.settings.fallbacks:
            logger.info("fallback: %s", fallback)
        logger.info("sessions: %r", self.store)
        if self.settings.redis:
            logger.info(
                "redis: %s (answer log, limits, cache, keys)", redact_url(self.settings.redis)
            )
        logger.info("auth: %s", "gateway API keys required" if self.auth_required else "off")
        for issuer in self.authority.config.issuers:
            logger.info("auth: tokens of %s (%s)", issuer.issuer, issuer.name)

    async def stop(self) -> None:
        if self.takeover is not None:
            await self.takeover.stop()
        await self.runner.shutdown()
        await self.callbacks.aclose()
        for extra in (self.pool or self._client, self.redis):  # the pool owns the client
            if extra is not None:
                await extra.aclose()
        if self.sim is not None:
            await asyncio.to_thread(self.sim.stop)
        await self.store.aclose()
        self.keys.close()

    async def send_callback(self, url: str, answer_id: str, session_id: str) -> None:
        """POST the finished answer (as the log's last event tells it) to `url`."""
        from dskit.gateway._views import answer_result

        result = await answer_result(self.log, answer_id, session_id)
        await self.callbacks.deliver(url, orjson.dumps(result.model_dump(mode="json")))

    def info(self) -> dict[str, Any]:
        from dskit._version import __version__

        url = self._client.base_url if self._client else ""
        return {"upstream": self.mode, "upstream_url": url, "auth": self.auth_required,
                "version": __version__}  # fmt: skip
