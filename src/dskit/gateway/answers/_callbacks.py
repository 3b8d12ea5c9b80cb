"""Async callbacks: the finished answer POSTed to the caller's URL, signed and retried.

Signature: `X-DSKit-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>`
under the configured secret, with the timestamp in `X-DSKit-Timestamp` (receivers reject
old timestamps to stop replays). Only hosts on the allow list are called: a gateway that
POSTs wherever a caller says is a server-side request forgery tool.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from urllib.parse import urlsplit

from dskit.gateway._errors import GatewayError
from dskit.gateway._settings import CallbackSettings

logger = logging.getLogger("dskit.gateway")
MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer; its status is all that counts
SIGNATURE_HEADER = "X-DSKit-Signature"
TIMESTAMP_HEADER = "X-DSKit-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for a body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether a received callback is genuine (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def host_allowed(host: str, allow_hosts: tuple[str, ...]) -> bool:
    """Exact host names, or `*.example.com` for any subdomain."""
    host = host.lower().rstrip(".")
    for allowed in allow_hosts:
        pattern = allowed.lower()
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def check_callback_url(url: str, settings: CallbackSettings) -> str:
    """The URL if callbacks may go there, else a clear 400."""
    if not settings.secret:
        raise GatewayError(
            400, "callbacks are not enabled on this gateway (no callback secret configured)",
            param="callback_url", code="callbacks_disabled",
        )  # fmt: skip
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not host_allowed(
        parts.hostname or "", settings.allow_hosts
    ):
        raise GatewayError(
            400, f"callback host {parts.hostname!r} is not on this gateway's allow list",
            param="callback_url", code="callback_host_not_allowed",
        )  # fmt: skip
    return url


class CallbackSender:
    """Delivers callbacks with exponential backoff; one HTTP client for all of them. Each
    attempt has `settings.timeout` seconds in all, and reads little of the answer."""

    def __init__(self, settings: CallbackSettings) -> None:
        import httpx2

        self.settings = settings
        self._http = httpx2.AsyncClient(timeout=settings.timeout, follow_redirects=False)
        self.delivered = 0
        self.failed = 0

    async def deliver(self, url: str, body: bytes) -> bool:
        """POST `body` to `url` until a 2xx answer or the attempts run out."""
        assert self.settings.secret is not None
        for attempt in range(self.settings.max_attempts):
            if attempt:
                await asyncio.sleep(self.settings.base_delay * 2 ** (attempt - 1))
            if await self._attempt(url, body):
                self.delivered += 1
                return True
        self.failed += 1
        logger.warning("callback to %s failed after %d attempts", url, self.settings.max_attempts)
        return False

    async def _attempt(self, url: str, body: bytes) -> bool:
        assert self.settings.secret is not None
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(self.settings.secret, stamp, body),
        }
        try:
            async with asyncio.timeout(self.settings.timeout):  # the whole attempt, not a read
                return await self._post(url, body, headers)
        except Exception as exc:  # any transport failure or a late answer is retried
            logger.info("callback to %s: %s", url, type(exc).__name__)
            return False

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        """POST and read at most `MAX_ANSWER_BYTES` of the answer (a receiver that sends a
        huge body gets its connection closed, not our memory)."""
        async with self._http.stream("POST", url, content=body, headers=headers) as response:
            seen = 0
            async for chunk in response.aiter_raw():
                seen += len(chunk)
                if seen >= MAX_ANSWER_BYTES:
                    break
            return 200 <= response.status_code < 300

    async def aclose(self) -> None:
        await self._http.aclose()
