"""Adaptive flow on the SSE streams of session answers, over real sockets: a reader on a
raw socket with a small receive buffer that stops reading falls behind and gets merged
events (exact text, contiguous ids, exact resume); one that keeps up gets one event per
logged entry; `adaptive_flow=False` turns it off. Also the measure it rests on: the
kernel's unsent queue of a real connection (`_unsent.py`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest

from dskit.gateway.edge._flow import WriteMeter
from dskit.gateway.edge._unsent import unsent_probe
from tests.conftest import wait_until
from tests.gateway.conftest import GatewayServer, parse_sse
from tests.gateway.test_ws import _contiguous, _seq

LONG = {"thinking": True, "effort": "max"}  # 120-300 reasoning words, then the answer
PROMPT = "Tell me a very long story"


class RawSSE:
    """One HTTP/1.1 request on a raw socket whose receive buffer is `rcvbuf` bytes (None:
    the system's), its chunked SSE body read `read` bytes at a time, as events arrive."""

    def __init__(self, port: int, head: str, body: bytes = b"", rcvbuf: int | None = 4096) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connect: it sets the window the client offers
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(head.encode() + body)
        self.raw = b""
        self.headers: dict[str, str] = {}

    @classmethod
    def post(cls, gateway: GatewayServer, sid: str, **kwargs: Any) -> RawSSE:
        body = orjson.dumps({"content": PROMPT, "stream": True})
        head = (
            f"POST /v1/sessions/{sid}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "X-Sim-Token-Ms: 2\r\n\r\n"
        )
        return cls(gateway.port, head, body, **kwargs)

    @classmethod
    def get(cls, gateway: GatewayServer, path: str, last_event_id: str, **kwargs: Any) -> RawSSE:
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: {last_event_id}\r\n\r\n"
        return cls(gateway.port, head, **kwargs)

    def close(self) -> None:
        self.sock.close()

    def _more(self, read: int) -> None:
        data = self.sock.recv(read)
        if not data:
            raise EOFError("the stream closed")
        self.raw += data

    def start(self, read: int = 512) -> dict[str, str]:
        while b"\r\n\r\n" not in self.raw:
            self._more(read)
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        status, *lines = head.decode().split("\r\n")
        assert status.startswith("HTTP/1.1 200"), status
        self.headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
        return self.headers

    def events(self, read: int = 512) -> Iterator[dict[str, Any]]:
        """Each numbered event (`data` parsed) as it completes; ends after `done`/`error`."""
        body = b""
        while True:
            *blocks, body = (body + self._chunk(read)).split(b"\n\n")
            for block in blocks:
                event = parse_sse(block.decode() + "\n\n")[0] if block.strip() else {}
                if "id" in event:
                    yield {**event, "data": orjson.loads(event["data"])}
                    if event["event"] in ("done", "error"):
                        return

    def _chunk(self, read: int) -> bytes:
        while b"\r\n" not in self.raw:
            self._more(read)
        size_line, _, rest = self.raw.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            self._more(read)
            rest = self.raw.partition(b"\r\n")[2]
        self.raw = rest[size + 2 :]
        return rest[:size]


def _session(http: httpx2.Client, **parameters: Any) -> str:
    response = http.post("/v1/sessions", json={"parameters": {"thinking": False, **parameters}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _page(gateway: GatewayServer, sid: str, answer_id: str, after: int = 0) -> dict[str, Any]:
    with gateway.client() as http:
        url = f"/v1/sessions/{sid}/answers/{answer_id}/events"
        page: dict[str, Any] = http.get(url, params={"after": after, "wait": 0}).json()
    return page


def _finished(gateway: GatewayServer, sid: str, answer_id: str) -> bool:
    return bool(_page(gateway, sid, answer_id)["finished"])


def _ranges(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(_seq(e["data"].get("from", e["id"])), _seq(e["id"])) for e in events]


def _text(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == kind)


def _logged_text(logged: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["data"]["text"] for e in logged if e["type"] == kind)


def _behind_then_read(gateway: GatewayServer, sid: str) -> tuple[str, list[dict[str, Any]]]:
    """A reader that takes 4 events, stops reading until the answer has ended (its
    window fills, the rest waits at the gateway), then reads it all."""
    reader = RawSSE.post(gateway, sid)
    try:
        answer_id = reader.start()["x-answer-id"]
        stream = reader.events()
        events = [next(stream) for _ in range(4)]
        wait_until(lambda: _finished(gateway, sid, answer_id), timeout=60, interval=0.05)
        events += list(stream)
    finally:
        reader.close()
    return answer_id, events


def test_a_reader_that_falls_behind_gets_merged_events_with_exact_text_and_ids(
    gateway: GatewayServer,
) -> None:
    with gateway.client() as http:
        sid = _session(http, **LONG)
    answer_id, events = _behind_then_read(gateway, sid)
    logged = _page(gateway, sid, answer_id)["events"]
    ranges = _ranges(events)
    assert _contiguous(ranges) and ranges[-1][1] == len(logged), ranges
    assert [e["id"].rpartition(":")[0] for e in events] == [answer_id] * len(events)
    merged = [e for e in events if "from" in e["data"]]
    assert merged and len(events) < len(logged) - 50, (len(events), len(logged), ranges)
    for kind in ("content", "reasoning"):
        assert _text(events, kind) == _logged_text(logged, kind)
    assert not any("from" in e["data"] for e in events[:4])  # it kept up at first
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["message"]["content"] == _text(events, "content")


def test_a_reader_that_keeps_up_gets_one_event_per_logged_entry(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http, **LONG)
    reader = RawSSE.post(gateway, sid, rcvbuf=None)
    try:
        answer_id = reader.start()["x-answer-id"]
        events = list(reader.events(read=65536))
    finally:
        reader.close()
    logged = _page(gateway, sid, answer_id)["events"]
    assert not any("from" in e["data"] for e in events)
    assert [(e["id"], e["event"], e["data"]) for e in events] == [
        (e["id"], e["type"], e["data"]) for e in logged
    ]


def _resume(gateway: GatewayServer, sid: str, last_event_id: str) -> list[dict[str, Any]]:
    reader = RawSSE.get(gateway, f"/v1/sessions/{sid}/stream", last_event_id, rcvbuf=None)
    try:
        reader.start()
        return list(reader.events(read=65536))
    finally:
        reader.close()


def test_resuming_after_a_merged_event_or_inside_its_range_is_exact(
    gateway: GatewayServer,
) -> None:
    with gateway.client() as http:
        sid = _session(http, **LONG)
    answer_id, events = _behind_then_read(gateway, sid)
    logged = _page(gateway, sid, answer_id)["events"]
    at = next(n for n, e in enumerate(events) if "from" in e["data"])
    first, last = _ranges([events[at]])[0]
    rest = _resume(gateway, sid, events[at]["id"])  # the reader dropped after it
    assert [(e["id"], e["event"], e["data"]) for e in rest] == [
        (e["id"], e["type"], e["data"]) for e in logged[last:]
    ]
    whole = events[: at + 1] + rest
    assert _contiguous(_ranges(whole)) and _ranges(whole)[-1][1] == len(logged)
    for kind in ("content", "reasoning"):
        assert _text(whole, kind) == _logged_text(logged, kind)
    middle = (first + last) // 2  # another reader's id from inside that range
    rest = _resume(gateway, sid, f"{answer_id}:{middle}")
    assert [e["id"] for e in rest] == [e["id"] for e in logged[middle:]]
    assert _text(rest, events[at]["event"]).startswith(
        _logged_text(logged[middle:last], events[at]["event"])
    )


def test_without_adaptive_flow_a_reader_that_falls_behind_gets_every_entry(
    gateway_factory: Any,
) -> None:
    gateway = gateway_factory(adaptive_flow=False)
    with gateway.client() as http:
        sid = _session(http, **LONG)
    answer_id, events = _behind_then_read(gateway, sid)
    logged = _page(gateway, sid, answer_id)["events"]
    assert not any("from" in e["data"] for e in events)
    assert [e["id"] for e in events] == [e["id"] for e in logged]


# ---- the measure: a real connection's unsent bytes -----------------------------------


async def test_the_probe_sees_what_a_client_that_does_not_read_holds_back() -> None:
    """A transport writing to a client that does not read: the probe counts what the
    kernel (and the transport) could not send; once the client reads it all, zero."""
    accepted: asyncio.Future[asyncio.BaseTransport] = asyncio.get_running_loop().create_future()

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(Sink, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await loop.sock_connect(client, ("127.0.0.1", port))
    transport = await accepted
    try:
        probe = unsent_probe(transport)
        if probe is None:
            pytest.skip("no unsent-bytes probe on this platform")
        assert probe() == 0
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"x" * 1_000_000)
        assert probe() > 100_000  # the client's window is a few KB: the rest waits
        received = 0
        while received < 1_000_000:
            received += len(await loop.sock_recv(client, 65536))
        assert probe() == 0
    finally:
        transport.close()
        client.close()
        listener.close()


async def test_a_meter_waits_for_a_behind_client_and_catches_up_only_after_a_while() -> None:
    """The meter's rules, with a probe the test sets: behind at `behind_bytes` unsent or
    a slow write; `room()` returns once nothing is unsent (or after `hold`); caught up
    only after `catch_up` seconds of writes that left nothing."""
    unsent = [0]
    meter = WriteMeter(lambda: unsent[0], behind_bytes=100, hold=0.05, catch_up=3600, probe_every=0)
    meter.wrote(0.0)
    assert not meter.behind
    unsent[0] = 100
    meter.wrote(0.0)
    assert meter.behind
    started = time.monotonic()
    await meter.room()  # held back until `hold`: the probe never drains
    assert time.monotonic() - started >= 0.05
    unsent[0] = 0
    await meter.room()
    meter.wrote(0.0)
    assert meter.behind  # it took this write, but has not kept up for `catch_up` yet
    meter.catch_up = 0
    meter.wrote(0.0)
    assert not meter.behind
    meter.wrote(meter.slow)  # without a probe's news, a write that waited says it
    assert meter.behind


def test_a_meter_asks_its_probe_at_most_every_probe_every_while_the_client_keeps_up() -> None:
    """The probe is a system call: a client keeping up is looked at once per
    `probe_every`, not per token; a write that waited, or a client behind, at once."""
    asked: list[int] = []
    unsent = [0]

    def probe() -> int:
        asked.append(unsent[0])
        return unsent[0]

    meter = WriteMeter(probe, behind_bytes=100, probe_every=3600)
    for _ in range(50):
        meter.wrote(0.0)
    assert len(asked) == 1 and not meter.behind
    meter.wrote(meter.slow)  # a write that waited is news: behind, whatever the probe
    assert meter.behind and len(asked) == 2
    unsent[0] = 100
    meter.wrote(0.0)
    meter.wrote(0.0)
    assert len(asked) == 4  # behind: every write looks
