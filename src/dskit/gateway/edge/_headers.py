"""The edge rules every request meets before any route runs (one pure-ASGI middleware).

- Host: a loopback name, the host the gateway listens on, or one of `allowed_hosts`
  (`*.example.com` for subdomains); anything else is 421. A page on `evil.example` whose
  name is re-pointed at 127.0.0.1 (DNS rebinding) sends `Host: evil.example`.
- POST bodies are `application/json` (415 otherwise): a cross-origin form or `text/plain`
  fetch, which a browser sends without asking, never reaches a route. A POST without a
  body (cancel, logout) may omit the type.
- A request authenticated by the web page's cookie (no bearer header) must come from the
  gateway's own origin: `Origin` equal to the Host (403 otherwise); a GET may omit it.
- A WebSocket handshake meets the Host rule and, with the cookie, always needs `Origin`
  equal to the Host (browsers send it; cross-origin WebSockets are not blocked by CORS);
  a refused handshake gets the error as an HTTP response (or a 1008 close).
- The page and its files (`/`, `/static/...`) carry a CSP and the usual framing,
  sniffing and referrer headers.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dskit._net import is_loopback
from dskit.gateway._errors import GatewayError
from dskit.gateway.answers._callbacks import host_allowed

COOKIE_PREFIX = b"dskit_gateway_key="
PAGE_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]  # fmt: skip
WANTED = frozenset({b"host", b"content-type", b"origin", b"cookie", b"authorization"})
WANTED |= {b"content-length", b"transfer-encoding"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class EdgeMiddleware:
    """Host, content-type and origin checks; security headers on the web page."""

    def __init__(self, app: ASGIApp, listen_host: str, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        wildcard = listen_host in ("", "0.0.0.0", "::")
        self.allowed_hosts = allowed_hosts if wildcard else (*allowed_hosts, listen_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        error = self._refusal(scope.get("method", "WEBSOCKET"), headers)
        if error is not None:
            await (_answer(send, error) if scope["type"] == "http" else deny(scope, send, error))
            return
        path: str = scope["path"]
        if path == "/" or path.startswith("/static/"):
            send = _with_page_headers(send)
        await self.app(scope, receive, send)

    def _refusal(self, method: str, headers: dict[bytes, bytes]) -> GatewayError | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.host_ok(host):
            return GatewayError(
                421, f"this gateway does not serve the host {host!r} (see --allowed-host)",
                code="host_not_allowed",
            )  # fmt: skip
        if method == "POST" and not _json_body(headers):
            return GatewayError(
                415, "request bodies must be application/json", code="unsupported_media_type"
            )
        if _cookie_auth(headers) and not _same_origin(method, headers, host):
            return GatewayError(
                403, "cross-origin request with the gateway's login cookie refused",
                "permission_error", code="cross_origin",
            )  # fmt: skip
        return None

    def host_ok(self, host: str) -> bool:
        name = _host_name(host)
        return bool(name) and (is_loopback(name) or host_allowed(name, self.allowed_hosts))


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name: value for name, value in scope["headers"] if name in WANTED}


def _host_name(host: str) -> str:
    """The name of a Host header value: `[::1]:8000` is `::1`, `a.b:80` is `a.b`."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _json_body(headers: dict[bytes, bytes]) -> bool:
    kind = headers.get(b"content-type")
    if kind is None:  # no body at all may go untyped
        return b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0"
    return kind.partition(b";")[0].strip().lower() == b"application/json"


def _cookie_auth(headers: dict[bytes, bytes]) -> bool:
    bearer = headers.get(b"authorization", b"")[:7].lower() == b"bearer "
    return not bearer and COOKIE_PREFIX in headers.get(b"cookie", b"")


def _same_origin(method: str, headers: dict[bytes, bytes], host: str) -> bool:
    origin = headers.get(b"origin")
    if origin is None:
        return method in SAFE_METHODS
    parts = urlsplit(origin.decode("latin-1"))
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def _with_page_headers(send: Send) -> Send:
    async def page_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *PAGE_HEADERS]
        await send(message)

    return page_send


async def _answer(send: Send, error: GatewayError) -> None:
    body = error.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def deny(scope: Scope, send: Send, error: GatewayError) -> None:
    """Refuse a WebSocket handshake: the error as an HTTP response where the server can
    send one (the `websocket.http.response` extension), else a 1008 close (a 403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
        return
    body = error.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "websocket.http.response.start", "status": error.status, "headers": headers}
    await send(start)
    await send({"type": "websocket.http.response.body", "body": body})
