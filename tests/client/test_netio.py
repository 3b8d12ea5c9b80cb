"""The asyncio network backend under `AsyncDeepSeek`: reads, timeouts, EOF, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpcore2
import pytest
import trustme

from dskit import AsyncDeepSeek
from dskit.client._netio import HIGH_WATER, AsyncioBackend

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server, port = await _serve(handle)
    async with server:
        yield port


async def test_async_client_reads_through_the_asyncio_backend(sim: Any) -> None:
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, AsyncioBackend)
        assert (await client.chat("hello")).content


async def test_write_then_read_round_trip(echo: int) -> None:
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", echo, timeout=5)
    await stream.write(b"ping", timeout=5)
    assert await stream.read(1024, timeout=5) == b"ping"
    assert stream.get_extra_info("server_addr")[1] == echo
    await stream.aclose()


async def test_large_reply_survives_back_pressure(echo: int) -> None:
    payload = bytes(range(256)) * (4 * HIGH_WATER // 256)
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", echo, timeout=5)
    await stream.write(payload, timeout=5)
    received = bytearray()
    while len(received) < len(payload):
        piece = await stream.read(1000, timeout=5)
        assert 0 < len(piece) <= 1000
        received += piece
    assert received == payload
    await stream.aclose()


async def test_read_timeout_is_httpcore_read_timeout(echo: int) -> None:
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", echo, timeout=5)
    with pytest.raises(httpcore2.ReadTimeout):
        await stream.read(1024, timeout=0.05)
    await stream.write(b"still usable", timeout=5)
    assert await stream.read(1024, timeout=5) == b"still usable"
    await stream.aclose()


async def test_peer_close_reads_as_end_and_is_readable() -> None:
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"last words")
        writer.close()
        closed.set()

    server, port = await _serve(handle)
    async with server:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        await closed.wait()
        assert await stream.read(1024, timeout=5) == b"last words"
        assert await stream.read(1024, timeout=5) == b""
        assert stream.get_extra_info("is_readable") is True
        await stream.aclose()


async def test_refused_connection_is_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(httpcore2.ConnectError):
            await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)


@pytest.fixture
async def tls_echo() -> AsyncIterator[tuple[int, trustme.CA]]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    async with server:
        yield server.sockets[0].getsockname()[1], ca


async def test_tls_upgrade_round_trip(tls_echo: tuple[int, trustme.CA]) -> None:
    port, ca = tls_echo
    context = ssl.create_default_context()
    ca.configure_trust(context)
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
    stream = await plain.start_tls(context, server_hostname="localhost", timeout=5)
    assert stream.get_extra_info("ssl_object") is not None
    await stream.write(b"secret ping", timeout=5)
    assert await stream.read(1024, timeout=5) == b"secret ping"
    await stream.aclose()


async def test_untrusted_certificate_is_connect_error(tls_echo: tuple[int, trustme.CA]) -> None:
    port, _ = tls_echo
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
    with pytest.raises(httpcore2.ConnectError):
        await plain.start_tls(ssl.create_default_context(), server_hostname="localhost", timeout=5)
