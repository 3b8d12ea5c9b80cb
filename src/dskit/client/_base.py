"""The construction both clients share: configuration, connection pool, repr."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dskit.client._accumulate import Seed
from dskit.client._config import Clock, Limits, Pace, RetryPolicy, Timeout
from dskit.client._core import ChatParams, ClientCore, Messages, Timeouts, chat_body
from dskit.client._driver import StreamDriver

if TYPE_CHECKING:
    import httpx2

HttpT = TypeVar("HttpT")
TransportT = TypeVar("TransportT")


class ClientBase(Generic[HttpT, TransportT]):
    """Settings with env fallback, one connection pool, a repr without the key.

    `verify`: True (the system's trust store), False (no TLS verification), or an
    `ssl.SSLContext`, e.g. `ssl.create_default_context(cafile=...)` for a proxy's CA.

    Subclasses say what they send through (an httpx2 client, dskit's own pool) in
    `_http_client`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        max_resumes: int = 3,
        pace: Pace | None = None,
        http2: bool = False,
        limits: Limits | None = None,
        default_headers: Mapping[str, str] | None = None,
        transport: TransportT | None = None,
        clock: Clock | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._core = ClientCore.create(
            api_key, base_url, timeout, retry, max_resumes, pace, default_headers, clock, limits
        )
        self._http: HttpT = self._http_client(http2=http2, transport=transport, verify=verify)

    def _http_client(
        self, *, http2: bool, transport: TransportT | None, verify: ssl.SSLContext | bool
    ) -> HttpT:
        raise NotImplementedError

    def _httpx_options(
        self, *, http2: bool, transport: TransportT | None, verify: ssl.SSLContext | bool
    ) -> dict[str, Any]:
        """The settings of an httpx2 client, sync or async: the pool's limits, no redirects."""
        import httpx2

        limits = self._core.limits
        return {
            "http2": http2,
            "transport": transport,
            "verify": verify,
            "follow_redirects": False,
            "limits": httpx2.Limits(
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
            ),
        }

    def _stream_driver(
        self, messages: Messages, params: ChatParams, seed: Seed | None = None
    ) -> StreamDriver:
        """The driver of one streamed answer; parameters are checked here, before any I/O."""
        return StreamDriver(
            self._core, chat_body(messages, params), self._core.options(params), seed
        )

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    @property
    def base_url(self) -> str:
        return self._core.base_url


def httpx_timeout(timeouts: Timeouts) -> httpx2.Timeout:
    """A driver's (connect, read) as httpx2 takes it: writes and pool waits get `connect`."""
    import httpx2

    connect, read = timeouts
    return httpx2.Timeout(connect=connect, read=read, write=connect, pool=connect)
