"""The composition root: every part of a gateway built once, in dependency order, by
`compose()`, injected where it is used and never replaced afterwards.

    settings -> authority, metrics, store, keys, auth switch
             -> backends (memory, or Redis for a fleet): answer log, limits, cache
             -> upstreams -> answers (context, runner, takeover) -> callbacks
The HTTP and gRPC edges (`edge/`) read the composed `Gateway`; `start()`/`stop()` run in
the app's lifespan (the upstream clients and the built-in simulator live from start to
stop; the takeover loop runs only with a shared log).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dskit.client._async import AsyncDeepSeek
from dskit.gateway._metrics import Metrics
from dskit.gateway._settings import GatewaySettings
from dskit.gateway.access._matrix import Authority
from dskit.gateway.access._switch import AuthSwitch
from dskit.gateway.access._watch import CredentialWatch
from dskit.gateway.answers._cache import CacheFront, make_semantic
from dskit.gateway.answers._callbacks import CallbackSender
from dskit.gateway.answers._context import AnswerContext
from dskit.gateway.answers._runner import AnswerRunner
from dskit.gateway.answers._takeover import TakeoverLoop
from dskit.gateway.backends._cache import AnswerCache, MemoryCache
from dskit.gateway.backends._keys import LOCAL_PRINCIPAL, KeyBackend
from dskit.gateway.backends._limits import MemoryRateLimiter, RateLimiter, make_rate_limiter
from dskit.gateway.backends._log import MemoryStreamLog, StreamLog
from dskit.gateway.backends._redis import RedisParts
from dskit.gateway.backends._redis_keys import open_keys
from dskit.gateway.backends._redis_limit import RedisRateLimiter
from dskit.gateway.backends._tool_results import ToolResults, make_tool_results
from dskit.gateway.upstreams._pool import UpstreamPool
from dskit.gateway.upstreams._upstreams import UpstreamMode, Upstreams
from dskit.store import SessionStore, open_store
from dskit.store._model import redact_url

if TYPE_CHECKING:
    from dskit.gateway.access._jwt import Clock

logger = logging.getLogger("dskit.gateway")


@dataclass(frozen=True, slots=True)
class Gateway:
    """Everything the edges use, composed by `compose()`."""

    settings: GatewaySettings
    authority: Authority  # roles, keys' role, token issuers
    auth: AuthSwitch
    metrics: Metrics
    store: SessionStore
    keys: KeyBackend
    log: StreamLog
    limiter: RateLimiter
    token_limiter: RateLimiter | None
    cache: CacheFront
    upstreams: Upstreams
    answers: AnswerContext
    runner: AnswerRunner
    takeover: TakeoverLoop | None
    redis: RedisParts | None
    watch: CredentialWatch  # open streams end when their key is revoked or token expires

    @property
    def tool_results(self) -> ToolResults:
        return self.answers.tool_results

    @property
    def client(self) -> AsyncDeepSeek:
        """The upstream client: one connection pool, whose kept-alive connections the
        next request reuses."""
        return self.upstreams.client

    @property
    def pool(self) -> UpstreamPool:
        return self.upstreams.pool

    @property
    def mode(self) -> UpstreamMode:
        return self.upstreams.mode

    @property
    def ready(self) -> bool:
        return self.upstreams.ready

    @property
    def auth_required(self) -> bool:
        return self.auth.required

    def principal_for(self, key: str | None) -> str | None:
        """The caller's principal: from a valid key, or `local` when auth is off."""
        if not self.auth.required:
            return LOCAL_PRINCIPAL
        return self.keys.principal_for(key) if key else None

    async def start(self) -> None:
        await self.upstreams.start()
        if self.takeover is not None:
            self.takeover.start()
        self._announce()

    def _announce(self) -> None:
        self.upstreams.announce()
        logger.info("sessions: %r", self.store)
        if self.settings.redis:
            logger.info(
                "redis: %s (answer log, limits, cache, keys)", redact_url(self.settings.redis)
            )
        logger.info("auth: %s", "gateway API keys required" if self.auth.required else "off")
        for issuer in self.authority.config.issuers:
            logger.info("auth: tokens of %s (%s)", issuer.issuer, issuer.name)

    async def stop(self) -> None:
        if self.takeover is not None:
            await self.takeover.stop()
        await self.runner.shutdown()
        await self.answers.callbacks.aclose()
        await self.upstreams.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.store.aclose()
        self.keys.close()

    def info(self) -> dict[str, Any]:
        from dskit._version import __version__

        url = self.client.base_url if self.ready else ""
        return {"upstream": self.mode, "upstream_url": url, "auth": self.auth.required,
                "version": __version__}  # fmt: skip


def compose(
    settings: GatewaySettings, *, store: SessionStore | None = None, log: StreamLog | None = None,
    limiter: RateLimiter | None = None, clock: Clock | None = None,
) -> Gateway:  # fmt: skip
    """The gateway's parts. `store`, `log` and `limiter` replace the defaults (the store
    `settings.store` names, else the Redis or in-memory log and limiter)."""
    authority = Authority(settings.auth, clock=clock)
    metrics = Metrics()
    redis = _redis_parts(settings)
    store = store if store is not None else open_store(settings.store or settings.redis)
    keys = open_keys(settings.redis, settings.redis_namespace, settings.keys_path)
    fleet = redis.log if redis is not None and log is None else None
    log = log if log is not None else fleet or MemoryStreamLog(ttl=settings.answer_ttl_seconds)
    upstreams = Upstreams(settings, metrics)
    cache = _cache_front(settings, redis, metrics)
    token_limiter = _token_limiter(settings, redis)
    answers = AnswerContext(
        settings, log, fleet, store, cache, upstreams, CallbackSender(settings.callbacks),
        metrics, token_limiter, make_tool_results(redis),
    )  # fmt: skip
    runner = AnswerRunner(answers)
    takeover = None
    if fleet is not None:
        takeover = TakeoverLoop(fleet, runner.worker, runner.adopt, settings.takeover_interval)
    auth = AuthSwitch(keys, tokens=authority.verifier is not None)
    return Gateway(
        settings=settings, authority=authority, auth=auth, metrics=metrics,
        store=store, keys=keys, log=log, limiter=limiter or _limiter(settings, redis),
        token_limiter=token_limiter, cache=cache, upstreams=upstreams,
        answers=answers, runner=runner, takeover=takeover, redis=redis,
        watch=_watch(settings, authority, auth, keys),
    )  # fmt: skip


def _redis_parts(settings: GatewaySettings) -> RedisParts | None:
    if not settings.redis:
        return None
    return RedisParts.build(
        settings.redis, namespace=settings.redis_namespace, lease_seconds=settings.lease_seconds,
        answer_ttl=settings.answer_ttl_seconds, rate_limit=settings.rate_limit,
    )  # fmt: skip


def _limiter(settings: GatewaySettings, redis: RedisParts | None) -> RateLimiter:
    if redis is not None and redis.limiter is not None:
        return redis.limiter
    return make_rate_limiter(settings.rate_limit)


def _token_limiter(settings: GatewaySettings, redis: RedisParts | None) -> RateLimiter | None:
    """The tokens bucket per principal (shared in Redis when there is one)."""
    limit = settings.tokens_limit
    if limit is None:
        return None
    if redis is not None:
        namespace = f"{settings.redis_namespace}:tokens"
        return RedisRateLimiter(redis.client, limit, namespace=namespace)
    return MemoryRateLimiter(limit)


def _cache_front(
    settings: GatewaySettings, redis: RedisParts | None, metrics: Metrics
) -> CacheFront:
    semantic = make_semantic(
        settings.semantic_cache, settings.semantic_threshold, settings.cache_ttl_seconds
    )
    cache: AnswerCache = redis.cache if redis is not None else MemoryCache()
    return CacheFront(cache, settings.cache_ttl_seconds, metrics, semantic)


def _watch(
    settings: GatewaySettings, authority: Authority, auth: AuthSwitch, keys: KeyBackend
) -> CredentialWatch:
    """Keys are checked against the key backend, tokens' ends against the token clock."""

    def still_valid(key: str) -> bool:
        return not auth.required or keys.principal_for(key) is not None

    clock = authority.verifier.clock if authority.verifier is not None else time.time
    return CredentialWatch(still_valid, settings.key_check_seconds, clock)
