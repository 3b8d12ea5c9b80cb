"""`Upstreams`: where answers come from, chosen once and started with the app.

Upstream choice (said in the log at startup and shown by the web page):
- a DeepSeek key (settings or DEEPSEEK_API_KEY): the given upstream, else the official API;
- no key but an upstream URL: that URL with a placeholder key (a simulator or a proxy);
- neither: the built-in simulator, started in-process on a free loopback port.

The primary client and every fallback's share one TLS context and sit in one
`UpstreamPool` (breakers, fallbacks in order). They exist from `start()` to `aclose()`;
before that, `client` and `pool` raise `ConfigError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from dskit.client._async import AsyncDeepSeek
from dskit.client._config import Limits, RetryPolicy, Timeout
from dskit.client._errors import ConfigError
from dskit.gateway._metrics import Metrics
from dskit.gateway._settings import GatewaySettings
from dskit.gateway.upstreams._breaker import UpstreamChooser, parse_upstreams
from dskit.gateway.upstreams._pool import UpstreamPool, breaker_gauge

if TYPE_CHECKING:
    from dskit.sim import SimServer

logger = logging.getLogger("dskit.gateway")
PLACEHOLDER_KEY = "sk-dskit-gateway-no-key"
MAX_UPSTREAM_CONNECTIONS = 10_000
UpstreamMode = Literal["deepseek", "custom", "simulator"]


@dataclass(frozen=True, slots=True)
class Started:
    """What `Upstreams.start()` brought up."""

    mode: UpstreamMode
    client: AsyncDeepSeek  # the primary upstream's (kept-alive connections are reused)
    pool: UpstreamPool  # owns `client` and every fallback's
    sim: SimServer | None


class Upstreams:
    """The upstream clients of one gateway, from `start()` to `aclose()`."""

    def __init__(self, settings: GatewaySettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._started: Started | None = None

    @property
    def ready(self) -> bool:
        return self._started is not None

    @property
    def running(self) -> Started:
        if self._started is None:
            raise ConfigError("the gateway is not started")
        return self._started

    @property
    def client(self) -> AsyncDeepSeek:
        return self.running.client

    @property
    def pool(self) -> UpstreamPool:
        return self.running.pool

    @property
    def mode(self) -> UpstreamMode:
        return self._started.mode if self._started else "simulator"

    async def start(self) -> None:
        key = self.settings.api_key or os.environ.get("DEEPSEEK_API_KEY") or None
        base_url = self.settings.upstream or os.environ.get("DEEPSEEK_BASE_URL") or None
        sim: SimServer | None = None
        mode: UpstreamMode
        if key:
            mode = "deepseek" if base_url is None else "custom"
        elif base_url:
            mode, key = "custom", PLACEHOLDER_KEY
        else:
            mode, key, sim = "simulator", PLACEHOLDER_KEY, await _start_sim()
            base_url = sim.base_url
        tls = _tls_context()
        client = self._new_client(key, base_url, tls)
        self._started = Started(mode, client, self._pool(client, key, tls), sim)

    def _pool(self, client: AsyncDeepSeek, key: str, tls: ssl.SSLContext) -> UpstreamPool:
        """Upstreams with breakers and fallbacks (the primary's client included)."""
        primary = client.base_url
        upstreams = parse_upstreams(primary, self.settings.fallbacks)
        sources: dict[str | None, AsyncDeepSeek] = {primary: client}
        for upstream in upstreams:
            if upstream.base_url not in sources:
                sources[upstream.base_url] = self._new_client(key, upstream.base_url, tls)
        chooser = UpstreamChooser(upstreams, self.settings.breaker)
        pool = UpstreamPool(chooser, sources, on_retry=self.metrics.retries.inc)
        breaker_gauge(self.metrics, pool)
        return pool

    def _new_client(self, key: str, base_url: str | None, tls: ssl.SSLContext) -> AsyncDeepSeek:
        most = MAX_UPSTREAM_CONNECTIONS
        return AsyncDeepSeek(
            api_key=key, base_url=base_url, verify=tls,
            limits=Limits(max_connections=most, max_keepalive_connections=most),
            retry=RetryPolicy(max_retries=self.settings.upstream_max_retries, base_delay=0.5),
            max_resumes=self.settings.upstream_max_resumes,
            timeout=Timeout(connect=10.0, read=660.0, idle=300.0),
        )  # fmt: skip

    def announce(self) -> None:
        if self.mode == "simulator":
            logger.warning(
                "no DEEPSEEK_API_KEY: answers come from the built-in OFFLINE SIMULATOR at %s "
                "(set DEEPSEEK_API_KEY to use DeepSeek)", self.client.base_url,
            )  # fmt: skip
        else:
            logger.info("upstream: %s (%s)", self.client.base_url, self.mode)
        for fallback in self.settings.fallbacks:
            logger.info("fallback: %s", fallback)

    async def aclose(self) -> None:
        started, self._started = self._started, None
        if started is None:
            return
        await started.pool.aclose()  # the pool owns the clients
        if started.sim is not None:
            await asyncio.to_thread(started.sim.stop)


def _tls_context() -> ssl.SSLContext:
    """One TLS context for every upstream client: building one loads the CA bundle
    (~40 ms), once for the primary and every fallback."""
    import httpx2

    return httpx2.create_ssl_context()


async def _start_sim() -> SimServer:
    from dskit.sim import SimServer

    sim = SimServer()
    await asyncio.to_thread(sim.start)
    return sim
