"""A plain-asyncio network backend for httpcore2 (what `AsyncDeepSeek` reads through).

httpcore2's default async backend goes through anyio: every read of a streamed answer
enters a cancel scope for its timeout, asks sniffio which event loop runs, and maps
exceptions through two context managers. For a stream of one small SSE event per read
that bookkeeping costs more than the read itself (about a fifth of a relaying gateway's
CPU). This backend is an `asyncio.Protocol` with a buffer: a read returns what has
arrived or waits on one future, its timeout is one `call_later`. Errors are httpcore2's
own (`ReadTimeout`, `ReadError`, ...), so httpx2 maps them exactly as before. Outside
asyncio (trio) it hands everything to httpcore2's usual backend.
"""

# The `timeout` parameters are httpcore2's interface, not a choice of ours:
# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore2
from httpcore2._backends.auto import AutoBackend
from httpcore2._types import SOCKET_OPTION as SocketOption
from httpcore2._utils import is_socket_readable

HIGH_WATER = 1 << 18  # bytes buffered before the socket stops being read


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; wakes the one reader (or writer) that waits."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.drain: asyncio.Future[bool] | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        _wake(self.waiter)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self.waiter)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        _wake(self.waiter)
        _wake(self.drain)

    def pause_writing(self) -> None:
        self.drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        _wake(self.drain)
        self.drain = None

    def take(self, max_bytes: int) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if len(data) > max_bytes:
            chunks.append(data[max_bytes:])
            data = data[:max_bytes]
        self.size -= len(data)
        if self.paused and self.size <= HIGH_WATER // 4 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


def _wake(future: asyncio.Future[bool] | None) -> None:
    if future is not None and not future.done():
        future.set_result(True)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


async def _wait(future: asyncio.Future[bool], timeout: float | None) -> bool:
    """True when woken, False when `timeout` passed first."""
    if timeout is None:
        return await future
    handle = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        return await future
    finally:
        handle.cancel()


class AsyncioStream(httpcore2.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            protocol.waiter = asyncio.get_running_loop().create_future()
            try:
                woken = await _wait(protocol.waiter, timeout)
            finally:
                protocol.waiter = None
            if not woken:
                raise httpcore2.ReadTimeout("timed out reading from the upstream")
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore2.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore2.WriteError("the connection is closed")
        self._transport.write(buffer)
        drain = self._protocol.drain
        if drain is not None and not await _wait(drain, timeout):
            raise httpcore2.WriteTimeout("timed out writing to the upstream")

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore2.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.abort()
            raise httpcore2.ConnectError(str(exc)) from exc
        if transport is None:  # the loop is closing
            raise httpcore2.ConnectError("the TLS handshake did not complete")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        if info == "is_readable":
            protocol = self._protocol
            if protocol.chunks or protocol.eof or transport.is_closing():
                return True
            return is_socket_readable(transport.get_extra_info("socket"))
        return None


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's network backend on plain asyncio (see the module docstring)."""

    def __init__(self) -> None:
        self._fallback = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): the usual backend
            return await self._fallback.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        local = (local_address, 0) if local_address else None
        return await _connect(
            loop.create_connection(_Protocol, host, port, local_addr=local),
            timeout,
            socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return await self._fallback.connect_unix_socket(path, timeout, socket_options)
        return await _connect(loop.create_unix_connection(_Protocol, path), timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(
    opening: Any, timeout: float | None, socket_options: Iterable[SocketOption] | None
) -> AsyncioStream:
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await opening
    except TimeoutError:
        raise httpcore2.ConnectTimeout("timed out connecting to the upstream") from None
    except OSError as exc:
        raise httpcore2.ConnectError(str(exc) or type(exc).__name__) from exc
    sock: socket.socket | None = transport.get_extra_info("socket")
    for option in socket_options or ():
        if sock is not None:
            sock.setsockopt(*option)
    return AsyncioStream(transport, protocol)


def install(client: Any) -> None:
    """Put the asyncio backend under an `httpx2.AsyncClient`'s own connection pool.

    httpx2 takes no backend argument, so this sets the pool's (private) attribute; a
    client whose transport is not httpx2's own (a test transport, a proxy) is left as is.
    """
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    if type(pool) is httpcore2.AsyncConnectionPool and hasattr(pool, "_network_backend"):
        pool._network_backend = AsyncioBackend()
