#!/usr/bin/env python3
"""Adaptive flow on a slow link, WebSocket and SSE: a reader on a 3G-like link, with and
without.

    .venv/bin/python bench/flow.py [--kbps 10] [--stall-ms 300] [--rcvbuf 4096] [--rounds 3]

Two `dskit serve` in front of one simulator (thinking at effort max: a few hundred
pieces, 2 ms apart), one as it comes and one with `--no-adaptive-flow`. The reader takes
in at most `--kbps` KB/s and stops for `--stall-ms` about once a second (seeded: the same
stalls in every mode), like a phone on 3G; its socket's receive buffer is `--rcvbuf`
bytes, so what it has not read holds the link back as a slow link does.

- WebSocket: with adaptive flow the reader acks each event it has consumed, so the
  gateway sees it fall behind and merges pending deltas; without, it never acks.
- SSE (`POST .../messages` with `"stream": true`, raw socket): the gateway measures what
  the connection could not send yet; "without" is the `--no-adaptive-flow` gateway.

Printed per mode (medians over `--rounds` answers): events and bytes received, the time
until the whole answer was read, the worst gap between two arrivals of new text, and the
"stalls" (gaps over 250 ms between new text), with their ratio to the same transport
without adaptive flow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
from websockets.sync.client import connect

DSKIT = Path(sys.executable).parent / "dskit"
STALL_GAP = 0.25  # seconds without new text that a reader notices (a visible hitch)
LONG = {"parameters": {"effort": "max"}}  # thinking at effort max: a long answer
PROMPT = "Tell me a very long story"
READ = 512  # bytes per read of the SSE reader


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)  # a bench waiting for a server it started, not a test
    raise RuntimeError(f"{url} not ready")


@dataclass
class Run:
    events: int
    bytes: int
    seconds: float
    worst_gap: float
    stalls: int


class Link:
    """The reader's link: `kbps` KB/s, a `stall_ms` stop about once a second, and what
    the reader saw (events, bytes, gaps between arrivals of new text)."""

    def __init__(self, kbps: float, stall_ms: float, rng: random.Random) -> None:
        self.per_byte = 1.0 / (kbps * 1024)
        self.stall = stall_ms / 1000
        self.rng = rng
        self.started = self.last_text = time.monotonic()
        self.next_stall = self.started + rng.uniform(0.5, 1.5)
        self.events = self.size = self.stalls = 0
        self.worst = 0.0

    def took(self, size: int) -> float:
        """`size` bytes came in: the link's time for them (and its stall, when due)."""
        self.size += size
        time.sleep(size * self.per_byte)  # the link's rate: the reader's own pace
        now = time.monotonic()
        if now >= self.next_stall:
            time.sleep(self.stall)  # a 3G stall of the reader's link
            self.next_stall = time.monotonic() + self.rng.uniform(0.5, 1.5)
            now = time.monotonic()
        return now

    def event(self, kind: str | None, now: float) -> None:
        self.events += 1
        if kind in ("content", "reasoning"):
            gap = now - self.last_text
            self.worst = max(self.worst, gap)
            self.stalls += gap > STALL_GAP
            self.last_text = now

    def run(self, now: float) -> Run:
        return Run(self.events, self.size, now - self.started, self.worst, self.stalls)


def slow_socket(address: str, rcvbuf: int) -> socket.socket:
    host, port = address.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    sock.connect((host, int(port)))
    return sock


def read_ws(gateway: str, ack: bool, link: Link, rcvbuf: int) -> Run:
    session = httpx2.post(f"http://{gateway}/v1/sessions", json=LONG).json()["id"]
    url = f"ws://{gateway}/v1/sessions/{session}/ws"
    with connect(url, sock=slow_socket(gateway, rcvbuf), max_size=None) as ws:
        ws.send(json.dumps({"type": "message", "content": PROMPT}))
        json.loads(ws.recv(timeout=30))  # the `answer` frame
        link.started = link.last_text = time.monotonic()
        while True:
            raw = ws.recv(timeout=60)
            now = link.took(len(raw))
            frame = json.loads(raw)
            link.event(frame.get("event"), now)
            if ack and "id" in frame:
                ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            if frame.get("event") in ("done", "error"):
                return link.run(now)


def read_sse(gateway: str, link: Link, rcvbuf: int) -> Run:
    session = httpx2.post(f"http://{gateway}/v1/sessions", json=LONG).json()["id"]
    body = json.dumps({"content": PROMPT, "stream": True}).encode()
    head = (
        f"POST /v1/sessions/{session}/messages HTTP/1.1\r\nHost: {gateway}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with slow_socket(gateway, rcvbuf) as sock:
        sock.sendall(head.encode() + body)
        link.started = link.last_text = time.monotonic()
        for kind, now in sse_events(sock, link.took):
            link.event(kind, now)
            if kind in ("done", "error"):
                return link.run(now)
    raise RuntimeError("the SSE stream ended before the answer")


def sse_events(sock: socket.socket, took: Callable[[int], float]) -> Iterator[tuple[str, float]]:
    """(event type, when it was read) of each SSE event, reading `READ` bytes at a time
    (the body is chunked: the chunk lines are only skipped, an event never holds one)."""
    buffer = b""
    while data := sock.recv(READ):
        now = took(len(data))
        buffer += data
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    yield line[7:].decode(), now


def median_run(runs: list[Run]) -> Run:
    return Run(
        int(statistics.median(r.events for r in runs)),
        int(statistics.median(r.bytes for r in runs)),
        statistics.median(r.seconds for r in runs),
        statistics.median(r.worst_gap for r in runs),
        int(statistics.median(r.stalls for r in runs)),
    )


def serve(
    port: int, upstream: str, tmp: Path, env: dict[str, str], *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(DSKIT), "serve", "--port", str(port), "--upstream", upstream, "--store", "memory",
         "--keys-db", str(tmp / f"keys-{port}.sqlite3"), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kbps", type=float, default=10.0)
    parser.add_argument("--stall-ms", type=float, default=300.0)
    parser.add_argument("--rcvbuf", type=int, default=4096, help="the reader's SO_RCVBUF")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dskit-flow-"))
    sim_port, on_port, off_port = free_port(), free_port(), free_port()
    env = {**os.environ, "DSKIT_HOME": str(tmp)}
    env.pop("DEEPSEEK_API_KEY", None)
    upstream = f"http://127.0.0.1:{sim_port}"
    sim = subprocess.Popen(
        [str(DSKIT), "sim", "--port", str(sim_port), "--token-ms", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    on = serve(on_port, upstream, tmp, env)
    off = serve(off_port, upstream, tmp, env, "--no-adaptive-flow")
    on_at, off_at = f"127.0.0.1:{on_port}", f"127.0.0.1:{off_port}"
    rcvbuf = args.rcvbuf
    modes: list[tuple[str, str, Callable[[Link], Run]]] = [  # the first of each: the base
        ("ws", "without (no acks)", lambda link: read_ws(on_at, False, link, rcvbuf)),
        ("ws", "adaptive (acks)", lambda link: read_ws(on_at, True, link, rcvbuf)),
        ("sse", "without", lambda link: read_sse(off_at, link, rcvbuf)),
        ("sse", "adaptive", lambda link: read_sse(on_at, link, rcvbuf)),
    ]
    try:
        wait_ready(f"http://{on_at}/readyz")
        wait_ready(f"http://{off_at}/readyz")
        rows: list[tuple[str, str, Run]] = []
        for transport, name, read in modes:
            rng = random.Random(7)
            runs = [read(Link(args.kbps, args.stall_ms, rng)) for _ in range(args.rounds)]
            rows.append((transport, name, median_run(runs)))
    finally:
        for process in (on, off, sim):
            process.terminate()
    print_table(args, rows)


def print_table(args: argparse.Namespace, rows: list[tuple[str, str, Run]]) -> None:
    print(f"\nreader at {args.kbps:g} KB/s with {args.stall_ms:g} ms stalls, SO_RCVBUF "
          f"{args.rcvbuf}; medians of {args.rounds} answers")  # fmt: skip
    print(f"{'mode':<24}{'events':>8}{'KB':>8}{'seconds':>9}{'worst gap':>11}"
          f"{'stalls':>8}{'x stalls':>10}")  # fmt: skip
    bases: dict[str, Run] = {}
    for transport, name, run in rows:
        base = bases.setdefault(transport, run)
        ratio = run.stalls / base.stalls if base.stalls else float("nan")
        print(f"{transport + ' ' + name:<24}{run.events:>8}{run.bytes / 1024:>8.1f}"
              f"{run.seconds:>9.2f}{run.worst_gap * 1000:>9.0f}ms{run.stalls:>8}"
              f"{ratio:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
