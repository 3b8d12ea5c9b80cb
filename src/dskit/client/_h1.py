"""HTTP/1.1 on plain asyncio: the connection pool `AsyncDeepSeek` streams through.

A streamed answer is one small SSE event per network read, for hundreds of reads, so the
cost per read is what matters. Through httpx2 a read climbs five layers (the response
iterator, httpcore2's connection and pool, h11's state machine, the network backend),
each with its own context managers. Here a connection is an `asyncio.Protocol`:
httptools (C, what uvicorn parses with) splits the response in `data_received`, the
body lands in a list, and a read takes what is there or waits on one future. The read
timeout is a lazy watchdog (one timer per timeout period, not one per read).

Errors are httpx2's own types (`ConnectError`, `ReadTimeout`, `RemoteProtocolError`, ...)
so the client maps them exactly as for httpx2. What this pool does not do (HTTP/2,
proxies, a custom transport) stays with httpx2: `AsyncDeepSeek` picks (see `usable`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import httpx2

from dskit.client._core import HTTPRequest, Timeouts

HIGH_WATER = 1 << 18  # body bytes buffered before the socket stops being read
KEEPALIVE_EXPIRY = 4.0  # seconds an idle connection is kept (servers often close at 5)
SWEEP_BATCH = 64  # expired idle connections closed per loop turn (an abort costs ~30 us)
ACCEPT_ENCODING = "gzip, deflate"  # exactly what `_decoder` undoes
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")

Origin = tuple[str, str, int]  # scheme, host, port


def usable(*, http2: bool, transport: object) -> bool:
    """Whether this pool can serve a client: HTTP/1.1, no custom transport, no proxy."""
    if http2 or transport is not None:
        return False
    return not any(os.environ.get(name) or os.environ.get(name.upper()) for name in PROXY_VARIABLES)


class H1Pool:
    """Keep-alive HTTP/1.1 connections per origin, at most `max_connections` in use."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        max_connections: int = 100,
        max_keepalive: int = 20,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self._verify = verify
        self._tls: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_keepalive
        self._expiry = keepalive_expiry
        # per origin, idle connections in the order they came back: popitem() takes the
        # newest (LIFO keeps few connections warm), the sweeper the oldest, and a lost one
        # leaves in O(1)
        self._idle: dict[Origin, OrderedDict[_Connection, None]] = {}
        self._open: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def idle(self) -> int:
        """Connections waiting in the pool for the next request."""
        return sum(len(conns) for conns in self._idle.values())

    @property
    def connections(self) -> int:
        """Open connections, idle or in use (what a leak test counts)."""
        return len(self._open)

    def stream(self, request: HTTPRequest, timeouts: Timeouts) -> _Exchange:
        """`async with pool.stream(request, timeouts) as response`: the response's head has
        arrived; its body is read with `aiter_bytes()` or `aread()`; leaving the block
        returns the connection to the pool (or closes it if the body was not all read)."""
        return _Exchange(self, request, timeouts)

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    # ---- leases --------------------------------------------------------------------

    async def _send(self, request: HTTPRequest, timeouts: Timeouts) -> H1Response:
        if self._closed:
            raise RuntimeError("the client is closed")
        connect_timeout, read_timeout = timeouts
        origin, target = _split(request.url)
        payload = _encode_request(request, origin, target)
        await self._acquire(connect_timeout)
        try:
            conn = self._reuse(origin)
            if conn is not None:
                try:
                    return await conn.exchange(payload, connect_timeout, read_timeout)
                except (httpx2.ReadError, httpx2.RemoteProtocolError, httpx2.WriteError):
                    if conn.received:  # the server answered something: not a stale socket
                        raise
                    conn.close()  # closed by the server while idle: once more, fresh
            conn = await self._connect(origin, connect_timeout)
            return await conn.exchange(payload, connect_timeout, read_timeout)
        except BaseException:
            self._slots.release()
            raise

    async def _acquire(self, seconds: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: no suspension on the fast path
            return
        try:
            async with asyncio.timeout(seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx2.PoolTimeout("no free connection in the pool in time") from None

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.popitem()[0]
            if not conn.reusable():  # lost while idle
                conn.close()
                continue
            if now - conn.idle_since < self._expiry:
                return conn
            conn.close()  # past its expiry, and so are the older ones: the sweeper's work
            return None
        return None

    async def _connect(self, origin: Origin, seconds: float | None) -> _Connection:
        scheme, host, port = origin
        tls = self._context() if scheme == "https" else None
        try:
            async with asyncio.timeout(seconds):
                conn = await _open(self, origin, tls)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:  # ssl.SSLError is one too
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc
        self._open.add(conn)
        return conn

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:  # built on first use: loading the CA bundle takes ~40 ms
            self._tls = httpx2.create_ssl_context(verify=self._verify)
        return self._tls

    def _release(self, conn: _Connection, keep: bool) -> None:
        self._slots.release()
        idle = self._idle.get(conn.origin)
        kept = 0 if idle is None else len(idle)
        if keep and not self._closed and conn.reusable() and kept < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, OrderedDict())[conn] = None
            if self._sweeper is None:
                self._sweep_in(self._expiry)
        else:
            conn.close()

    def _sweep_in(self, delay: float) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Close the idle connections past their expiry, oldest first, a batch per loop
        turn: off the request path (a request meeting a thousand expired connections
        after a burst would close them all first), and never a long pause for the loop."""
        self._sweeper = None
        oldest_kept = time.monotonic() - self._expiry
        closed, wait = 0, None
        for idle in self._idle.values():
            while idle and closed < SWEEP_BATCH:
                conn = next(iter(idle))
                if conn.idle_since > oldest_kept:
                    left = conn.idle_since - oldest_kept
                    wait = left if wait is None else min(wait, left)
                    break
                conn.close()  # `_forget` takes it out of `idle`
                closed += 1
        if closed == SWEEP_BATCH:
            self._sweep_in(0)
        elif wait is not None:
            self._sweep_in(wait)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle:
            idle.pop(conn, None)


class _Exchange:
    def __init__(self, pool: H1Pool, request: HTTPRequest, timeouts: Timeouts) -> None:
        self._pool = pool
        self._request = request
        self._timeouts = timeouts
        self._response: H1Response | None = None

    async def __aenter__(self) -> H1Response:
        self._response = await self._pool._send(self._request, self._timeouts)
        return self._response

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            await self._response.aclose()


class H1Response:
    """A response whose head has arrived. Iterate `aiter_bytes()` (decoded body pieces,
    as they arrive) or `await aread()`; `aclose()` gives the connection back."""

    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status_code = status
        self.headers: Mapping[str, str] = headers
        self._decoder = _decoder(headers.get("content-encoding", ""))
        self._done = False

    def aiter_bytes(self) -> H1Response:
        return self

    def __aiter__(self) -> H1Response:
        return self

    async def __anext__(self) -> bytes:
        while True:
            data = await self._conn.read()
            if not data:
                tail = self._finish()
                if tail:
                    return tail
                raise StopAsyncIteration
            if self._decoder is not None:
                data = _decode(self._decoder, data)
            if data:
                return data

    async def aread(self) -> bytes:
        return b"".join([data async for data in self])

    def _finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        if self._decoder is None:
            return b""
        try:
            return cast(bytes, self._decoder.flush())
        except zlib.error as exc:
            raise httpx2.DecodingError(f"invalid compressed body: {exc}") from exc

    async def aclose(self) -> None:
        conn, self._conn = self._conn, cast(Any, None)
        if conn is not None:
            conn.end_response()


def _decoder(encoding: str) -> Any:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding == "gzip":
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise httpx2.DecodingError(f"unsupported content-encoding {encoding!r}")


def _decode(decoder: Any, data: bytes) -> bytes:
    try:
        return cast(bytes, decoder.decompress(data))
    except zlib.error as exc:
        raise httpx2.DecodingError(f"invalid compressed body: {exc}") from exc


class _Connection(asyncio.Protocol):
    """One connection: one request at a time; the response parsed as bytes arrive."""

    transport: asyncio.Transport  # set by connection_made, before the pool gets the connection

    def __init__(self, pool: H1Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0
        self.lost = False
        # the transport's state, which outlives a response
        self.drain: asyncio.Future[None] | None = None  # writing paused: the buffer is full
        self.paused = False  # reading paused: HIGH_WATER body bytes wait for the caller
        self.watchdog: asyncio.TimerHandle | None = None  # cancelled when a response ends
        self._reset(None, None)

    def _reset(self, parser: Any, read_timeout: float | None) -> None:
        """The state of one response (no parser: no response is expected)."""
        self.parser = parser
        self.timeout = read_timeout
        self.received = False  # any byte of the current response
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.keep_alive = False  # read with the head (llhttp forgets it once the body ends)
        self.until_eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.last = 0.0
        self.wait_started = 0.0

    # ---- the exchange (called by the pool) -------------------------------------------

    async def exchange(
        self, payload: bytes, write_timeout: float | None, read_timeout: float | None
    ) -> H1Response:
        if not self.reusable():
            raise httpx2.WriteError("the connection is closed")
        self._reset(httptools.HttpResponseParser(self), read_timeout)
        self.transport.write(payload)
        try:
            if self.drain is not None:
                await self._drained(self.drain, write_timeout)
            await self._wait_head()
            return H1Response(self, self.status, self._headers())
        except BaseException:  # also a cancel, or an unknown content-encoding: never reusable
            self.close()
            raise

    @staticmethod
    async def _drained(drain: asyncio.Future[None], seconds: float | None) -> None:
        try:
            async with asyncio.timeout(seconds):
                await drain
        except TimeoutError:
            raise httpx2.WriteTimeout("timed out writing the request") from None

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.raw_headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return headers

    async def _wait_head(self) -> None:
        """Until the final status line and headers are in (`status` is set only then)."""
        while not self.status:
            if self.error is not None:
                raise self.error
            await self._more("the response")

    async def read(self) -> bytes:
        """Body bytes that have arrived (waits for some); b"" once the body has ended."""
        while not self.body:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._more("the response body")
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.size = 0
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def _more(self, what: str) -> None:
        """Wait for bytes (or the end); `ReadTimeout` when none come within the timeout."""
        self.waiter = self.loop.create_future()
        self.wait_started = self.loop.time()
        self._arm()
        if not await self.waiter:
            raise httpx2.ReadTimeout(f"timed out waiting for {what}")

    def end_response(self) -> None:
        """The caller is done with the response: back to the pool, or closed."""
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        keep = self.complete and self.keep_alive and not self.body and self.error is None
        self.parser = None
        self.pool._release(self, keep)

    def reusable(self) -> bool:
        return not self.lost and not self.transport.is_closing()

    def close(self) -> None:
        """Drop the connection now: abort, not close (nothing is left to flush, and a TLS
        close waits for the peer's goodbye, which a broken peer never sends)."""
        self.lost = True
        self.transport.abort()
        self.pool._forget(self)

    # ---- the read timeout: a lazy watchdog ---------------------------------------------

    def _arm(self) -> None:
        if self.timeout is not None and self.watchdog is None:
            self.watchdog = self.loop.call_at(self.wait_started + self.timeout, self._check)

    def _check(self) -> None:
        self.watchdog = None
        waiter, timeout = self.waiter, self.timeout
        if waiter is None or waiter.done() or timeout is None:
            return  # nobody waits now; the next wait arms it again
        deadline = max(self.last, self.wait_started) + timeout
        if self.loop.time() >= deadline:
            waiter.set_result(False)
        else:
            self.watchdog = self.loop.call_at(deadline, self._check)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        parser = self.parser
        if parser is None or self.complete:  # bytes nobody asked for: not reusable
            self.lost = True
            return
        self.received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error = httpx2.RemoteProtocolError("unexpected protocol upgrade")
        except httptools.HttpParserError as exc:
            self.error = httpx2.RemoteProtocolError(f"invalid HTTP response: {exc}")
        if self.size > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)
        self.pool._forget(self)

    def _ended(self, exc: Exception | None) -> None:
        self.lost = True
        if self.parser is None or self.complete:
            return
        if self.until_eof and self.status:
            self.complete = True
        elif self.error is None:
            what = "the response" if not self.received else "the response body"
            cause = f": {exc}" if exc else ""
            error = httpx2.ReadError if exc else httpx2.RemoteProtocolError
            self.error = error(f"the server closed the connection before the end of {what}{cause}")
        self._wake()

    def pause_writing(self) -> None:
        self.drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)
        self.drain = None

    # ---- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.status = parser.get_status_code()
        if 100 <= self.status < 200:  # an interim response: the real one follows
            self.status = 0
            self.raw_headers = []
            return
        self.keep_alive = parser.should_keep_alive()
        names = {name.lower() for name, _ in self.raw_headers}
        self.until_eof = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and self.status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        if self.status:
            self.complete = True


async def _open(pool: H1Pool, origin: Origin, tls: ssl.SSLContext | None) -> _Connection:
    """TCP, then TLS on top: a failed handshake aborts the socket at once (asyncio's own
    `create_connection(ssl=...)` can leave it to the garbage collector)."""
    _, host, port = origin
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(lambda: _Connection(pool, origin), host, port)
    if tls is None:
        return conn
    try:
        secured = await loop.start_tls(transport, conn, tls, server_hostname=host)
    except BaseException:
        transport.abort()
        raise
    if secured is None:  # the loop is closing
        transport.abort()
        raise ConnectionError("the TLS handshake did not complete")
    conn.transport = secured
    return conn


def _split(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise httpx2.UnsupportedProtocol(f"cannot send to {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def _encode_request(request: HTTPRequest, origin: Origin, target: str) -> bytes:
    scheme, host, port = origin
    default = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    if port != default:
        shown = f"{shown}:{port}"
    lines = [f"{request.method} {target} HTTP/1.1", f"Host: {shown}"]
    given = {name.lower() for name in request.headers}
    for name, value in request.headers.items():
        _check_header(name, value)
        lines.append(f"{name}: {value}")
    if "accept-encoding" not in given:
        lines.append(f"Accept-Encoding: {ACCEPT_ENCODING}")
    content = request.content or b""
    if request.method != "GET" or content:
        lines.append(f"Content-Length: {len(content)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8") + content


def _check_header(name: str, value: str) -> None:
    if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
        raise httpx2.LocalProtocolError(f"invalid header {name!r}")
