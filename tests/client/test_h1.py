"""dskit's own HTTP/1.1 pool (`dskit.client._h1`), against real servers over loopback.

Most tests run a small raw server (`asyncio.start_server`) whose handler writes exactly
the bytes a case needs (split across TCP writes where the split matters) and counts the
connections it accepts; the rest use the simulator (`sim`) or a local TLS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
import trustme

from dskit import AsyncDeepSeek, Limits, RetryPolicy, Timeout
from dskit.client import _h1
from dskit.client._async import HttpxIO
from dskit.client._core import HTTPRequest
from dskit.client._h1 import HIGH_WATER, H1Pool

from .conftest import FakeClock

TIMEOUTS = (5.0, 5.0)
SLACK = 0.005  # timeouts run on loop.time(); uvloop's is a cached, millisecond clock


# ---- a raw loopback server ----------------------------------------------------------------


@dataclass
class Request:
    line: str  # "POST /path HTTP/1.1"
    headers: list[tuple[str, str]]  # as sent: names keep their case
    body: bytes
    raw_head: bytes

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request off the connection; None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = [
        (name, value.strip()) for name, value in (line.split(":", 1) for line in lines[1:] if line)
    ]
    length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
    body = await reader.readexactly(length)
    return Request(lines[0], headers, body, head)


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Hold the connection until the client closes it."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    """One accepted connection, as a handler sees it."""

    number: int  # 1 for the server's first connection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: Server

    async def request(self) -> Request | None:
        request = await read_request(self.reader)
        if request is not None:
            self.server.requests.append(request)
        return request

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Each piece is its own write (its own TCP segment, given the pause)."""
        for index, piece in enumerate(pieces):
            if index and pause:
                await asyncio.sleep(pause)  # a slow server, by design
            self.writer.write(piece)
            await self.writer.drain()


@dataclass
class Server:
    handler: Handler
    tls: ssl.SSLContext | None = None
    accepted: int = 0
    open_now: int = 0
    max_open: int = 0
    requests: list[Request] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    host: str = "127.0.0.1"
    port: int = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepted += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            await self.handler(Conn(self.accepted, reader, writer, self))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # cancelled by `serve` at the end of a test: end quietly (no error log)
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self.tasks.discard(task)


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Server]:
    server = Server(handler, tls, host=host)
    listener = await asyncio.start_server(server._serve, host, 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        if server.tasks:  # handlers mostly end on the client's close; cancel the rest
            await asyncio.wait(list(server.tasks), timeout=1.0)
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def pool_of(**options: Any) -> AsyncIterator[H1Pool]:
    pool = H1Pool(**options)
    try:
        yield pool
    finally:
        await pool.aclose()


def response(body: bytes = b"", status: str = "200 OK", headers: tuple[str, ...] = ()) -> bytes:
    """A complete Content-Length response."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def keep_alive(conn: Conn) -> None:
    """Answer every request on the connection with its path and connection number."""
    while (request := await conn.request()) is not None:
        path = request.line.split()[1]
        await conn.send(response(f"{path} on {conn.number}".encode()))


def get(url: str, headers: dict[str, str] | None = None) -> HTTPRequest:
    return HTTPRequest("GET", url, headers or {})


async def fetch(pool: H1Pool, url: str, timeouts: Any = TIMEOUTS) -> bytes:
    async with pool.stream(get(url), timeouts) as reply:
        assert reply.status_code == 200
        return await reply.aread()


async def fetch_post(
    pool: H1Pool,
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    timeouts: Any = TIMEOUTS,
) -> bytes:
    async with pool.stream(HTTPRequest("POST", url, headers or {}, body), timeouts) as reply:
        return await reply.aread()


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `predicate` (state another task changes) until true, or fail at the deadline."""
    deadline = time.monotonic() + within
    for _ in range(100_000):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.002)
    raise AssertionError(f"not true within {within}s: {predicate!r}")


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


# ---- 1. which client AsyncDeepSeek drives --------------------------------------------------


async def test_async_client_uses_the_h1_pool_by_default(no_proxy_env: pytest.MonkeyPatch) -> None:
    assert _h1.usable(http2=False, transport=None)
    limits = Limits(max_connections=7, max_keepalive_connections=3)
    async with AsyncDeepSeek("sk-test-000000", base_url="http://127.0.0.1:9", limits=limits) as c:
        assert isinstance(c._http, H1Pool)
        assert c._http._slots._value == 7  # the client's limits reach the pool
        assert c._http._max_idle == 3
        assert c._http.connections == 0  # nothing is opened before a request


@pytest.mark.parametrize("how", ["http2", "transport"])
async def test_http2_or_a_custom_transport_goes_through_httpx(
    no_proxy_env: pytest.MonkeyPatch, how: str
) -> None:
    options: dict[str, Any] = (
        {"http2": True} if how == "http2" else {"transport": httpx2.AsyncHTTPTransport()}
    )
    assert not _h1.usable(http2=how == "http2", transport=options.get("transport"))
    async with AsyncDeepSeek("sk-test-000000", base_url="http://127.0.0.1:9", **options) as c:
        assert isinstance(c._http, HttpxIO)
        assert isinstance(c._http.client, httpx2.AsyncClient)


@pytest.mark.parametrize(
    "variable", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
)
async def test_a_proxy_in_the_environment_goes_through_httpx(
    no_proxy_env: pytest.MonkeyPatch, variable: str
) -> None:
    no_proxy_env.setenv(variable, "http://127.0.0.1:3128")
    assert not _h1.usable(http2=False, transport=None)
    async with AsyncDeepSeek("sk-test-000000", base_url="http://127.0.0.1:9") as c:
        assert isinstance(c._http, HttpxIO)
    no_proxy_env.setenv(variable, "")  # set but empty: no proxy
    assert _h1.usable(http2=False, transport=None)


async def test_async_client_keeps_one_connection_alive_against_the_simulator(
    sim: Any, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        pool = client._http
        assert isinstance(pool, H1Pool)
        first = await client.chat("first over h1", max_tokens=8, thinking=False)
        second = await client.chat("second over h1", max_tokens=8, thinking=False)
        assert first.content and second.content
        assert [m.id for m in await client.models()]
        assert pool.connections == 1  # three calls, one kept-alive connection
    assert pool.connections == 0


async def test_paced_streams_reuse_their_connection(
    sim: Any, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """Paced by tokens (one simulator write per piece), every stream still ends with its
    connection back in the pool for the next one."""
    paced = {"X-Sim-Token-Ms": "1"}
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        pool = client._http
        assert isinstance(pool, H1Pool)
        for turn in range(5):
            result = await client.chat(
                f"paced {turn}", max_tokens=8, thinking=False, extra_headers=paced
            )
            assert result.content
            assert pool.connections == 1 and pool.idle == 1  # back before chat() returns
    assert pool.connections == 0


# ---- 2. keep-alive --------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    async with serve(keep_alive) as server, pool_of() as pool:
        assert await fetch(pool, f"{server.url}/a") == b"/a on 1"
        assert pool.connections == 1
        assert await fetch(pool, f"{server.url}/b") == b"/b on 1"
        assert server.accepted == 1
        assert pool.connections == 1
        await pool.aclose()
        assert pool.connections == 0
        await eventually(lambda: server.open_now == 0)  # the server saw the close
        with pytest.raises(RuntimeError, match="closed"):
            await fetch(pool, f"{server.url}/c")
        assert server.accepted == 1


async def test_connection_close_from_the_server_is_not_reused() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(b"bye", headers=("Connection: close",)))
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        assert await fetch(pool, server.url) == b"bye"
        assert pool.connections == 0
        await eventually(lambda: server.open_now == 0)
        assert await fetch(pool, server.url) == b"bye"
        assert server.accepted == 2


@pytest.mark.parametrize(
    ("head", "kept"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nold", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nold", True),
    ],
    ids=["http10", "http10-keep-alive", "http11-keep-alive"],
)
async def test_keep_alive_follows_the_response_head(head: bytes, kept: bool) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(head)

    async with serve(handler) as server, pool_of() as pool:
        assert await fetch(pool, server.url) == b"old"
        assert await fetch(pool, server.url) == b"old"
        assert server.accepted == (1 if kept else 2)
        assert pool.connections == (1 if kept else 0)


async def test_at_most_max_keepalive_idle_connections_are_kept() -> None:
    gate = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await gate.wait()
            await conn.send(response(b"ok"))

    async with serve(handler) as server, pool_of(max_keepalive=1) as pool:
        tasks = [asyncio.create_task(fetch(pool, server.url)) for _ in range(3)]
        await eventually(lambda: len(server.requests) == 3)
        assert pool.connections == 3
        gate.set()
        assert await asyncio.gather(*tasks) == [b"ok"] * 3
        assert pool.connections == 1
        await eventually(lambda: server.open_now == 1)


async def test_different_origins_get_different_connections() -> None:
    async with serve(keep_alive) as one, serve(keep_alive) as two, pool_of() as pool:
        assert await fetch(pool, f"{one.url}/x") == b"/x on 1"
        assert await fetch(pool, f"{two.url}/y") == b"/y on 1"
        assert await fetch(pool, f"{one.url}/z") == b"/z on 1"
        assert (one.accepted, two.accepted) == (1, 1)
        assert pool.connections == 2


# ---- 3. the connection limit ----------------------------------------------------------------


async def test_concurrent_streams_share_max_connections() -> None:
    arrived, both_in = 0, asyncio.Event()

    async def handler(conn: Conn) -> None:  # holds its answers until two streams are in
        nonlocal arrived
        while (request := await conn.request()) is not None:
            arrived += 1
            if arrived == 2:
                both_in.set()
            await both_in.wait()
            await conn.send(response(request.line.split()[1].encode()))

    async with serve(handler) as server, pool_of(max_connections=2) as pool:
        bodies = await asyncio.gather(*(fetch(pool, f"{server.url}/{i}") for i in range(5)))
        assert bodies == [f"/{i}".encode() for i in range(5)]
        assert server.max_open == 2  # the limit was reached, never passed
        assert server.accepted == 2
        assert len(server.requests) == 5
        assert pool.connections == 2


async def test_no_free_slot_within_the_connect_timeout_is_a_pool_timeout() -> None:
    async with serve(keep_alive) as server, pool_of(max_connections=1) as pool:
        async with pool.stream(get(f"{server.url}/held"), TIMEOUTS) as held:
            started = time.monotonic()
            with pytest.raises(httpx2.PoolTimeout):
                await fetch(pool, f"{server.url}/waits", timeouts=(0.1, 5.0))
            assert 0.1 - SLACK <= time.monotonic() - started < 1.0
            assert await held.aread() == b"/held on 1"
        # the held slot came back, and the timed-out wait took none
        assert await fetch(pool, f"{server.url}/next") == b"/next on 1"
        assert await fetch(pool, f"{server.url}/again") == b"/again on 1"
        assert len(server.requests) == 3


async def test_a_waiter_gets_the_slot_when_it_is_released() -> None:
    async with serve(keep_alive) as server, pool_of(max_connections=1) as pool:
        async with pool.stream(get(f"{server.url}/first"), TIMEOUTS) as held:
            waiting = asyncio.create_task(fetch(pool, f"{server.url}/second"))
            assert await held.aread() == b"/first on 1"
        # one connection ever: the waiter did not open its own, it took the released one
        assert await asyncio.wait_for(waiting, 5) == b"/second on 1"
        assert server.accepted == 1


# ---- 4. a response left early ---------------------------------------------------------------


async def partial_or_full(conn: Conn) -> None:
    """/full: a whole response. /partial: a head and part of a long body, then wait."""
    while (request := await conn.request()) is not None:
        if request.line.split()[1] == "/partial":
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
            await conn.send(head + b"x" * 1000)
            await until_closed(conn.reader)
            return
        await conn.send(response(f"full on {conn.number}".encode()))


async def test_leaving_a_response_early_closes_its_connection() -> None:
    async with serve(partial_or_full) as server, pool_of(max_connections=1) as pool:
        assert await fetch(pool, f"{server.url}/full") == b"full on 1"
        assert pool.connections == 1
        async with pool.stream(get(f"{server.url}/partial"), TIMEOUTS) as reply:
            assert reply.status_code == 200
            assert await reply.aiter_bytes().__anext__() == b"x" * 1000
        assert pool.connections == 0  # closed, not put back half-read
        await eventually(lambda: server.open_now == 0)
        # the slot came back (max_connections=1), on a fresh connection
        assert await fetch(pool, f"{server.url}/full") == b"full on 2"
        assert pool.connections == 1


async def test_an_exception_inside_the_block_closes_the_connection() -> None:
    async with serve(partial_or_full) as server, pool_of(max_connections=1) as pool:
        with pytest.raises(ZeroDivisionError):
            async with pool.stream(get(f"{server.url}/partial"), TIMEOUTS):
                _ = 1 / 0
        assert pool.connections == 0
        assert await fetch(pool, f"{server.url}/full") == b"full on 2"


async def test_closing_the_pool_under_a_response_ends_its_body() -> None:
    async with serve(partial_or_full) as server, pool_of() as pool:
        async with pool.stream(get(f"{server.url}/partial"), TIMEOUTS) as reply:
            await pool.aclose()
            assert pool.connections == 0
            with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
                await reply.aread()
        assert pool.connections == 0
        await eventually(lambda: server.open_now == 0)


async def test_cancelling_a_request_waiting_for_its_head_frees_slot_and_connection() -> None:
    async def handler(conn: Conn) -> None:
        if conn.number == 1:
            await conn.request()  # and never answer
            await until_closed(conn.reader)
            return
        await keep_alive(conn)

    async with serve(handler) as server, pool_of(max_connections=1) as pool:
        task = asyncio.create_task(fetch(pool, f"{server.url}/hang"))
        await eventually(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.connections == 0
        await eventually(lambda: server.open_now == 0)
        assert await fetch(pool, f"{server.url}/after", timeouts=(0.5, 5.0)) == b"/after on 2"


async def test_cancelling_a_request_waiting_for_a_slot_takes_no_slot() -> None:
    async with serve(keep_alive) as server, pool_of(max_connections=1) as pool:
        async with pool.stream(get(f"{server.url}/held"), TIMEOUTS) as held:
            waiting = asyncio.create_task(fetch(pool, f"{server.url}/never"))
            await asyncio.sleep(0)  # let it start waiting for the slot
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await held.aread()
        for path in ("/one", "/two"):
            assert await fetch(pool, server.url + path, timeouts=(0.5, 5.0)) == (
                f"{path} on 1".encode()
            )
        assert [r.line.split()[1] for r in server.requests] == ["/held", "/one", "/two"]


def one_slot_client(sim: Any) -> AsyncDeepSeek:
    return AsyncDeepSeek(
        "sk-test-000000",
        base_url=sim.base_url,
        limits=Limits(max_connections=1),
        timeout=Timeout(connect=0.5, read=5.0),
        clock=FakeClock(),
        retry=RetryPolicy(max_retries=0),  # a leaked slot shows as a PoolTimeout
    )


async def test_a_stream_broken_off_early_leaves_no_connection_in_use(
    sim: Any, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async with one_slot_client(sim) as client:
        pool = client._http
        assert isinstance(pool, H1Pool)
        stream = client.stream("a long answer please", extra_headers={"X-Sim-Token-Ms": "20"})
        assert await stream.__anext__()  # the answer is still coming, 20 ms a token
        await stream.aclose()
        # closed (half-read) by the time aclose() returns, not later by a finalizer
        assert pool.connections == 0
        # the only slot is free again: the next call goes through
        result = await client.chat("again", max_tokens=5, thinking=False)
        assert result.content
        assert pool.connections == 1


async def test_an_exception_in_the_consumer_of_a_client_stream_releases_it(
    sim: Any, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async with one_slot_client(sim) as client:
        pool = client._http
        assert isinstance(pool, H1Pool)
        with pytest.raises(LookupError):
            async with client.stream("fail", extra_headers={"X-Sim-Token-Ms": "20"}) as stream:
                async for _ in stream:
                    raise LookupError("consumer failed")
        assert pool.connections == 0
        assert (await client.chat("again", max_tokens=5, thinking=False)).content


# ---- 5. bodies ------------------------------------------------------------------------------

TEXT = b"The quick brown fox jumps over the lazy dog. " * 40


def _gzip_pieces() -> list[bytes]:
    packed = gzip.compress(TEXT)
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(packed)}\r\n\r\n"
    return [head.encode(), packed[:7], packed[7:30], packed[30:]]


def _deflate_pieces() -> list[bytes]:
    packed = zlib.compress(TEXT)
    head = "HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = f"{len(packed):x}\r\n".encode() + packed + b"\r\n0\r\n\r\n"
    return [head.encode(), chunk[:5], chunk[5:]]


BODIES: dict[str, tuple[list[bytes], bytes, bool]] = {
    # name: (what the server writes, piece by piece; the decoded body; kept alive)
    "content-length": (
        [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 11\r\n\r\nhel", b"lo", b" world"],
        b"hello world",
        True,
    ),
    "chunked": (
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n1",  # a chunk-size line split in the middle: "1" | "0\r\n"
            b"0\r\n, sixteen bytes!\r",
            b"\n3;name=value\r\n...\r\n0\r",  # a chunk extension
            b"\n\r\n",
        ],
        b"hello, sixteen bytes!...",
        True,
    ),
    "close-delimited": (
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ", b"the ", b"end"],
        b"until the end",
        False,
    ),
    "gzip": (_gzip_pieces(), TEXT, True),
    "deflate-chunked": (_deflate_pieces(), TEXT, True),
}


@pytest.mark.parametrize("name", list(BODIES))
async def test_bodies_decode_whatever_the_framing(name: str) -> None:
    pieces, expected, kept = BODIES[name]

    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(*pieces, pause=0.005)
            if not kept:
                return  # the end of the body is the end of the connection

    async with serve(handler) as server, pool_of() as pool:
        for _ in range(2):
            async with pool.stream(get(server.url), TIMEOUTS) as reply:
                assert reply.status_code == 200
                received = [data async for data in reply.aiter_bytes()]
            assert b"".join(received) == expected
            assert all(received)  # no empty pieces
        assert pool.connections == (1 if kept else 0)
        assert server.accepted == (1 if kept else 2)


async def test_the_body_is_delivered_as_it_arrives() -> None:
    second_asked = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await second_asked.wait()  # the client must have had "first" without the rest
        await conn.send(b"6\r\nsecond\r\n0\r\n\r\n")
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        async with pool.stream(get(server.url), TIMEOUTS) as reply:
            pieces = reply.aiter_bytes()
            assert await pieces.__anext__() == b"first"
            second_asked.set()
            assert await pieces.__anext__() == b"second"
            with pytest.raises(StopAsyncIteration):
                await pieces.__anext__()


async def test_an_unknown_content_encoding_is_a_decoding_error_that_leaks_nothing() -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(response(b"\x00\x01", headers=("Content-Encoding: br",)))

    async with serve(handler) as server, pool_of() as pool:
        for _ in range(3):
            with pytest.raises(httpx2.DecodingError, match="br"):
                await fetch(pool, server.url)
        assert pool.connections == 0
        await eventually(lambda: server.open_now == 0, within=1.0)


async def test_a_corrupt_gzip_body_is_a_decoding_error() -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(response(b"not gzip at all", headers=("Content-Encoding: gzip",)))

    async with serve(handler) as server, pool_of() as pool:
        for _ in range(2):
            async with pool.stream(get(server.url), TIMEOUTS) as reply:
                assert reply.status_code == 200
                with pytest.raises(httpx2.DecodingError):
                    await reply.aread()
        # the framing was intact, only the content was bad: the connection is reused
        assert server.accepted == 1
        assert pool.connections == 1


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
async def test_bodyless_statuses_have_an_empty_body_and_keep_the_connection(status: str) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(f"HTTP/1.1 {status}\r\nX-Status: yes\r\n\r\n".encode())

    async with serve(handler) as server, pool_of() as pool:
        for _ in range(2):
            async with pool.stream(get(server.url), TIMEOUTS) as reply:
                assert reply.status_code == int(status.split(maxsplit=1)[0])
                assert reply.headers["x-status"] == "yes"
                assert await reply.aread() == b""
        assert server.accepted == 1
        assert pool.connections == 1


async def test_headers_are_lowercased_and_repeats_joined() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        head = ("X-Trace: a", "set-cookie: one=1", "Set-Cookie: two=2", "Content-Type: text/x")
        await conn.send(response(b"{}", status="418 I'm a teapot", headers=head))

    async with serve(handler) as server, pool_of() as pool:
        async with pool.stream(get(server.url), TIMEOUTS) as reply:
            assert reply.status_code == 418
            assert reply.headers["x-trace"] == "a"
            assert reply.headers["set-cookie"] == "one=1, two=2"
            assert reply.headers["content-type"] == "text/x"
            assert reply.headers["content-length"] == "2"
            assert await reply.aread() == b"{}"


# ---- 6. errors ------------------------------------------------------------------------------


async def test_a_fresh_connection_closed_before_any_response_is_a_protocol_error() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()  # read it all, then close: a clean FIN, not a reset

    async with serve(handler) as server, pool_of() as pool:
        with pytest.raises(httpx2.RemoteProtocolError):
            await fetch(pool, server.url)
        assert server.accepted == 1  # a fresh connection's failure is not retried
        assert pool.connections == 0


@pytest.mark.parametrize(
    "sent",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_cut_short_is_an_error_from_the_iteration(sent: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(sent)

    async with serve(handler) as server, pool_of() as pool:
        received: list[bytes] = []
        async with pool.stream(get(server.url), TIMEOUTS) as reply:
            assert reply.status_code == 200
            with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
                async for data in reply.aiter_bytes():
                    received.append(data)
        assert b"".join(received) == b"only ten b"  # what came is delivered first
        assert pool.connections == 0


@pytest.mark.parametrize(
    "garbage", [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 abc Nope\r\n\r\n", b"\x16\x03\x01\x00"]
)
async def test_garbage_instead_of_a_status_line_is_a_protocol_error(garbage: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(garbage)
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        with pytest.raises(httpx2.RemoteProtocolError):
            await fetch(pool, server.url)
        assert pool.connections == 0
        assert server.accepted == 1


async def test_an_upgrade_response_is_a_protocol_error() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        with pytest.raises(httpx2.RemoteProtocolError):
            await fetch(pool, server.url)
        assert pool.connections == 0


async def test_nobody_listening_is_a_connect_error() -> None:
    with socket.socket() as taken:  # bound, never listening: the port is ours and refuses
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        async with pool_of() as pool:
            with pytest.raises(httpx2.ConnectError) as info:
                await fetch(pool, f"http://127.0.0.1:{port}/")
            assert any(isinstance(e, ConnectionRefusedError) for e in causes(info.value))
            assert pool.connections == 0
            with pytest.raises(httpx2.ConnectError):  # the slot was given back
                await fetch(pool, f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http:///nohost", "127.0.0.1:80"])
async def test_an_unsupported_url_is_refused(url: str) -> None:
    async with pool_of() as pool:
        with pytest.raises(httpx2.UnsupportedProtocol):
            await fetch(pool, url)


# ---- 7. stale and expired keep-alive connections ---------------------------------------------


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(f"one on {conn.number}".encode()))
        # keep-alive was promised; the server closes the idle socket anyway

    async with serve(handler) as server, pool_of() as pool:
        assert await fetch(pool, server.url) == b"one on 1"
        assert await fetch(pool, server.url) == b"one on 2"
        assert server.accepted == 2
        assert pool.connections == 1


async def test_a_stale_connection_found_on_reuse_is_retried_fresh() -> None:
    # the first connection reads the second request and closes without a byte: what a
    # stale keep-alive socket does when the server's close crosses the request
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(f"on {conn.number}".encode()))
        if conn.number == 1:
            await conn.request()
            return
        while await conn.request() is not None:
            await conn.send(response(f"on {conn.number}".encode()))

    async with serve(handler) as server, pool_of() as pool:
        assert await fetch(pool, server.url) == b"on 1"
        assert await fetch(pool, server.url) == b"on 2"  # transparently retried
        assert server.accepted == 2
        assert len(server.requests) == 3
        assert pool.connections == 1


async def test_a_reused_connection_that_answered_something_is_not_retried() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(b"first"))
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Le")  # then gone: a real failure

    async with serve(handler) as server, pool_of() as pool:
        assert await fetch(pool, server.url) == b"first"
        with pytest.raises(httpx2.RemoteProtocolError):
            await fetch(pool, server.url)
        assert server.accepted == 1
        assert pool.connections == 0


async def test_an_idle_connection_past_keepalive_expiry_is_not_reused() -> None:
    async with serve(keep_alive) as server, pool_of(keepalive_expiry=0.05) as pool:
        assert await fetch(pool, f"{server.url}/a") == b"/a on 1"
        assert await fetch(pool, f"{server.url}/b") == b"/b on 1"  # within the expiry
        await asyncio.sleep(0.08)  # idle for longer than the expiry: the behaviour tested
        assert await fetch(pool, f"{server.url}/c") == b"/c on 2"
        assert server.accepted == 2
        assert pool.connections == 1
        await eventually(lambda: server.open_now == 1)  # the expired one was closed


async def test_expired_idle_connections_are_closed_without_a_request() -> None:
    """The pool sweeps expired idle connections itself, more than one batch of them, so
    the next request after a quiet spell does not pay for closing them."""
    count = _h1.SWEEP_BATCH + 6
    arrived, all_in = 0, asyncio.Event()

    async def together(conn: Conn) -> None:  # answers once every request is in
        nonlocal arrived
        while (request := await conn.request()) is not None:
            arrived += 1
            if arrived == count:
                all_in.set()
            await all_in.wait()
            await conn.send(response(request.line.split()[1].encode()))

    async with (
        serve(together) as server,
        pool_of(max_keepalive=count, keepalive_expiry=0.2) as pool,
    ):
        urls = [f"{server.url}/{i}" for i in range(count)]
        await asyncio.gather(*(fetch(pool, url) for url in urls))
        assert server.accepted == count
        assert pool.idle == count
        await eventually(lambda: server.open_now == 0 and pool.connections == 0)
        assert pool.idle == 0
        assert await fetch(pool, f"{server.url}/after") == b"/after"


# ---- 8. the read timeout -------------------------------------------------------------------


async def test_a_body_that_stalls_is_a_read_timeout() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        async with pool.stream(get(server.url), (5.0, 0.2)) as reply:
            started = time.monotonic()
            with pytest.raises(httpx2.ReadTimeout):
                await reply.aread()
            elapsed = time.monotonic() - started
        assert 0.2 - SLACK <= elapsed < 1.2
        assert pool.connections == 0


async def test_a_trickling_body_keeps_the_read_timeout_at_bay() -> None:
    body = b"0123456789"

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for index in range(len(body)):
            await asyncio.sleep(0.05)  # a byte every 50 ms for 0.5 s
            await conn.send(body[index : index + 1])
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        started = time.monotonic()
        assert await fetch(pool, server.url, timeouts=(5.0, 0.2)) == body
        assert time.monotonic() - started >= 0.45  # far past the read timeout in all


async def test_a_trickling_head_keeps_the_read_timeout_at_bay() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def handler(conn: Conn) -> None:
        await conn.request()
        pieces = [head[i : i + 5] for i in range(0, len(head), 5)]
        await conn.send(*pieces, pause=0.05)
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        started = time.monotonic()
        assert await fetch(pool, server.url, timeouts=(5.0, 0.15)) == b"ok"
        assert time.monotonic() - started >= 0.3


async def test_a_head_that_never_comes_is_a_read_timeout() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        started = time.monotonic()
        with pytest.raises(httpx2.ReadTimeout):
            await fetch(pool, server.url, timeouts=(5.0, 0.2))
        assert 0.2 - SLACK <= time.monotonic() - started < 1.2
        assert pool.connections == 0
        assert server.accepted == 1  # a timeout is not retried on another connection


async def test_time_the_caller_spends_between_reads_does_not_count() -> None:
    reading = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        await reading.wait()
        await asyncio.sleep(0.1)
        await conn.send(b"late")
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        async with pool.stream(get(server.url), (5.0, 0.2)) as reply:
            await asyncio.sleep(0.3)  # a slow consumer: longer than the read timeout
            reading.set()
            assert await reply.aread() == b"late"  # waited 0.1 s: within the timeout


async def test_a_read_timeout_then_a_fresh_request_succeeds() -> None:
    async def handler(conn: Conn) -> None:
        request = await conn.request()
        if conn.number == 1:
            await until_closed(conn.reader)
            return
        while request is not None:
            await conn.send(response(b"fine"))
            request = await conn.request()

    async with serve(handler) as server, pool_of(max_connections=1) as pool:
        with pytest.raises(httpx2.ReadTimeout):
            await fetch(pool, server.url, timeouts=(5.0, 0.1))
        assert await fetch(pool, server.url, timeouts=(5.0, 0.1)) == b"fine"
        assert server.accepted == 2


# ---- 9. request encoding --------------------------------------------------------------------


async def test_the_request_is_encoded_as_given() -> None:
    async with serve(keep_alive) as server, pool_of() as pool:
        request = HTTPRequest(
            "POST",
            f"{server.url}/v1/chat?stream=true&x=%20",
            {"Authorization": "Bearer sk-x", "X-Custom-Case": "Mixed  Value; q=1"},
            b'{"a": 1}',
        )
        async with pool.stream(request, TIMEOUTS) as reply:
            assert await reply.aread() == b"/v1/chat?stream=true&x=%20 on 1"
        seen = server.requests[0]
        assert seen.line == "POST /v1/chat?stream=true&x=%20 HTTP/1.1"
        assert seen.values("Host") == [f"127.0.0.1:{server.port}"]
        assert seen.values("Content-Length") == ["8"]
        assert seen.values("Accept-Encoding") == ["gzip, deflate"]
        assert ("Authorization", "Bearer sk-x") in seen.headers
        assert b"\r\nX-Custom-Case: Mixed  Value; q=1\r\n" in seen.raw_head  # verbatim
        assert seen.body == b'{"a": 1}'


async def test_a_callers_accept_encoding_replaces_the_default() -> None:
    async with serve(keep_alive) as server, pool_of() as pool:
        await fetch(pool, server.url)
        async with pool.stream(get(server.url, {"accept-encoding": "identity"}), TIMEOUTS) as r:
            await r.aread()
        default, given = server.requests
        assert default.values("Accept-Encoding") == ["gzip, deflate"]
        assert given.values("Accept-Encoding") == ["identity"]


async def test_a_bodyless_get_has_no_content_length_and_an_empty_post_has_zero() -> None:
    async with serve(keep_alive) as server, pool_of() as pool:
        await fetch(pool, server.url)  # no path at all: "/"
        async with pool.stream(HTTPRequest("POST", f"{server.url}/p", {}), TIMEOUTS) as r:
            await r.aread()
        got, posted = server.requests
        assert got.line == "GET / HTTP/1.1"
        assert got.values("Content-Length") == []
        assert posted.values("Content-Length") == ["0"]


async def test_a_large_request_body_arrives_whole() -> None:
    body = random.Random(99).randbytes(3 * 1024 * 1024)  # past the transport's write buffer

    async def handler(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            await conn.send(response(hashlib.sha256(request.body).hexdigest().encode()))

    async with serve(handler) as server, pool_of() as pool:
        async with pool.stream(HTTPRequest("POST", server.url, {}, body), TIMEOUTS) as reply:
            assert await reply.aread() == hashlib.sha256(body).hexdigest().encode()
        assert server.requests[0].values("Content-Length") == [str(len(body))]


async def test_a_server_that_does_not_read_the_request_is_a_write_timeout() -> None:
    body = bytes(48 * 1024 * 1024)  # more than loopback's socket buffers can take
    done = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")  # the head only, then read nothing
        await done.wait()

    async with serve(handler) as server, pool_of() as pool:
        started = time.monotonic()
        with pytest.raises(httpx2.WriteTimeout):
            await fetch_post(pool, server.url, body, timeouts=(0.3, 5.0))
        assert 0.3 - SLACK <= time.monotonic() - started < 2.0
        assert pool.connections == 0
        done.set()


async def test_cancelling_a_request_stuck_writing_frees_slot_and_connection() -> None:
    body = bytes(48 * 1024 * 1024)  # more than loopback's socket buffers can take
    head_read, done = asyncio.Event(), asyncio.Event()

    async def handler(conn: Conn) -> None:
        if conn.number == 1:
            await conn.reader.readuntil(b"\r\n\r\n")  # the head only, then read nothing
            head_read.set()
            await done.wait()
            return
        await keep_alive(conn)

    async with serve(handler) as server, pool_of(max_connections=1) as pool:
        task = asyncio.create_task(fetch_post(pool, server.url, body))
        await head_read.wait()  # the socket buffers fill up: the request waits to drain
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.connections == 0  # aborted, not left open with half a request in it
        assert await fetch(pool, f"{server.url}/after", timeouts=(0.5, 5.0)) == b"/after on 2"
        done.set()


async def test_a_non_ascii_header_value_is_sent_as_utf8() -> None:
    async with serve(keep_alive) as server, pool_of() as pool:
        await fetch_post(pool, server.url, b"", headers={"X-Name": "caf\u00e9 \u2713"})
        assert b"\r\nX-Name: caf\xc3\xa9 \xe2\x9c\x93\r\n" in server.requests[0].raw_head


def test_the_default_port_is_left_out_of_host() -> None:
    # a test cannot listen on port 80 or 443: look at the bytes that would be sent
    origin, target = _h1._split("http://example.test/x?y=1")
    payload = _h1._encode_request(
        HTTPRequest("GET", "http://example.test/x?y=1", {}), origin, target
    )
    assert payload.startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: example.test\r\n")
    origin, target = _h1._split("https://example.test:8443")
    payload = _h1._encode_request(
        HTTPRequest("GET", "https://example.test:8443", {}), origin, target
    )
    assert b"\r\nHost: example.test:8443\r\n" in payload


async def test_an_ipv6_host_is_bracketed() -> None:
    try:
        server_cm = serve(keep_alive, host="::1")
        server = await server_cm.__aenter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        async with pool_of() as pool:
            assert await fetch(pool, f"{server.url}/six") == b"/six on 1"
        assert server.requests[0].values("Host") == [f"[::1]:{server.port}"]
    finally:
        await server_cm.__aexit__(None, None, None)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil": "a\r\nInjected: yes"},
        {"X-Evil": "a\nb"},
        {"X-Evil": "a\rb"},
        {"Bad Name": "x"},
        {"Bad:Name": "x"},
        {"": "x"},
    ],
    ids=["crlf", "lf", "cr", "space-in-name", "colon-in-name", "empty-name"],
)
async def test_an_invalid_header_is_refused_before_anything_is_sent(
    headers: dict[str, str],
) -> None:
    async with serve(keep_alive) as server, pool_of() as pool:
        with pytest.raises(httpx2.LocalProtocolError):
            async with pool.stream(get(server.url, headers), TIMEOUTS):
                pass
        assert server.accepted == 0
        assert pool.connections == 0
        assert await fetch(pool, server.url) == b"/ on 1"  # no slot was taken


# ---- 10. interim responses -----------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "two-writes"])
async def test_an_interim_100_continue_is_skipped(split: bool) -> None:
    interim = b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
    final = response(b"real", status="201 Created", headers=("X-Final: yes",))

    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(*([interim, final] if split else [interim + final]), pause=0.01)

    async with serve(handler) as server, pool_of() as pool:
        for _ in range(2):
            async with pool.stream(HTTPRequest("POST", server.url, {}, b"x"), TIMEOUTS) as reply:
                assert reply.status_code == 201
                assert reply.headers["x-final"] == "yes"
                assert "x-interim" not in reply.headers
                assert await reply.aread() == b"real"
        assert server.accepted == 1  # and the connection stays usable


# ---- 11. back-pressure ---------------------------------------------------------------------


async def test_a_large_body_read_slowly_arrives_whole_and_bounded() -> None:
    body = random.Random(1234).randbytes(8 * 1024 * 1024)

    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        conn.writer.write(body)
        await conn.writer.drain()
        await until_closed(conn.reader)

    async with serve(handler) as server, pool_of() as pool:
        digest = hashlib.sha256()
        size = largest = 0
        async with pool.stream(get(server.url), TIMEOUTS) as reply:
            async for data in reply.aiter_bytes():
                digest.update(data)
                size += len(data)
                largest = max(largest, len(data))
                for _ in range(20):  # a slow reader: the loop runs on, reading the socket
                    await asyncio.sleep(0)
        assert size == len(body)
        assert digest.digest() == hashlib.sha256(body).digest()
        # reading stopped past HIGH_WATER: never more than that plus one socket read buffered
        assert largest <= HIGH_WATER + 256 * 1024
        assert pool.connections == 1


# ---- 12. TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_with_a_trusting_context_keeps_alive(
    ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    async with serve(keep_alive, tls=server_tls) as server, pool_of(verify=trusting(ca)) as pool:
        assert server.url.startswith("https://")
        assert await fetch(pool, f"{server.url}/a") == b"/a on 1"
        assert await fetch(pool, f"{server.url}/b") == b"/b on 1"
        assert server.accepted == 1
        assert server.requests[0].values("Host") == [f"127.0.0.1:{server.port}"]


async def test_tls_with_an_untrusted_ca_is_a_connect_error(server_tls: ssl.SSLContext) -> None:
    async with serve(keep_alive, tls=server_tls) as server, pool_of(verify=True) as pool:
        with pytest.raises(httpx2.ConnectError) as info:
            await fetch(pool, server.url)
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in causes(info.value))
        assert pool.connections == 0
        assert server.requests == []


async def test_tls_without_verification_connects(server_tls: ssl.SSLContext) -> None:
    async with serve(keep_alive, tls=server_tls) as server, pool_of(verify=False) as pool:
        assert await fetch(pool, f"{server.url}/v") == b"/v on 1"


async def test_tls_through_the_async_client_against_the_tls_server(
    ca: trustme.CA, server_tls: ssl.SSLContext, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async def models(conn: Conn) -> None:
        while await conn.request() is not None:
            body = b'{"object": "list", "data": [{"id": "deepseek-chat", "object": "model"}]}'
            await conn.send(response(body, headers=("Content-Type: application/json",)))

    async with serve(models, tls=server_tls) as server:
        async with AsyncDeepSeek(
            "sk-tls-000000", base_url=server.url, verify=trusting(ca), clock=FakeClock()
        ) as client:
            assert isinstance(client._http, H1Pool)
            assert [m.id for m in await client.models()] == ["deepseek-chat"]
        assert server.requests[0].line.startswith("GET /")
        assert server.requests[0].values("Authorization") == ["Bearer sk-tls-000000"]
