"""The construction both clients share: configuration, connection pool, repr."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Generic, TypeVar

from dskit.client._config import Clock, Limits, Pace, RetryPolicy, Timeout
from dskit.client._core import ClientCore

HttpT = TypeVar("HttpT")
TransportT = TypeVar("TransportT")


class ClientBase(Generic[HttpT, TransportT]):
    """Settings with env fallback, one pooled httpx2 client, a repr without the key.

    `verify`: True (the system's trust store), False (no TLS verification), or an
    `ssl.SSLContext`, e.g. `ssl.create_default_context(cafile=...)` for a proxy's CA.

    Subclasses say which httpx2 client they drive (sync or async) in `_http_client`.
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
        import httpx2

        pool = httpx2.Limits(
            max_connections=self._core.limits.max_connections,
            max_keepalive_connections=self._core.limits.max_keepalive_connections,
        )
        self._http: HttpT = self._http_client(
            httpx2,
            http2=http2,
            transport=transport,
            limits=pool,
            verify=verify,
            follow_redirects=False,
        )

    def _http_client(self, module: ModuleType, **options: Any) -> HttpT:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    @property
    def base_url(self) -> str:
        return self._core.base_url
