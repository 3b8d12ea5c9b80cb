#!/usr/bin/env python3
"""Adaptive flow on the session WebSocket: a reader on a 3G-like link, with and without.

    .venv/bin/python bench/flow.py [--kbps 10] [--stall-ms 300] [--rounds 3]

A `dskit serve` in front of the simulator (thinking at effort max: a few hundred
pieces, 2 ms apart); a reader on
the session WebSocket that takes in at most `--kbps` KB/s and stops for `--stall-ms`
about once a second (seeded), like a phone on 3G. With adaptive flow the reader acks
each event it has consumed, so the gateway sees it fall behind and merges pending deltas
into fewer, larger events; without, it never acks and gets one event per token. Printed
per mode (medians over `--rounds` answers): events and bytes received, the time until
the whole answer was read, the worst gap between two arrivals of new text, and the
"stalls" (gaps over 250 ms between new text), with their ratio to the mode without.
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
from dataclasses import dataclass
from pathlib import Path

import httpx2
from websockets.sync.client import connect

DSKIT = Path(sys.executable).parent / "dskit"
STALL_GAP = 0.25  # seconds without new text that a reader notices (a visible hitch)


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


def read_answer(gateway: str, ack: bool, kbps: float, stall_ms: float, rng: random.Random) -> Run:
    long = {"parameters": {"effort": "max"}}  # thinking at effort max: a long answer
    session = httpx2.post(f"http://{gateway}/v1/sessions", json=long).json()["id"]
    budget_per_byte = 1.0 / (kbps * 1024)
    with connect(f"ws://{gateway}/v1/sessions/{session}/ws", max_size=None) as ws:
        ws.send(json.dumps({"type": "message", "content": "Tell me a very long story"}))
        json.loads(ws.recv(timeout=30))  # the `answer` frame
        started = last_text = time.monotonic()
        events = size = stalls = 0
        worst = 0.0
        next_stall = started + rng.uniform(0.5, 1.5)
        while True:
            raw = ws.recv(timeout=60)
            size += len(raw)
            time.sleep(len(raw) * budget_per_byte)  # the link's rate: the reader's own pace
            now = time.monotonic()
            if now >= next_stall:
                time.sleep(stall_ms / 1000)  # a 3G stall of the reader's link
                next_stall = time.monotonic() + rng.uniform(0.5, 1.5)
                now = time.monotonic()
            frame = json.loads(raw)
            events += 1
            if ack and "id" in frame:
                ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            if frame.get("event") in ("content", "reasoning"):
                gap = now - last_text
                worst = max(worst, gap)
                stalls += gap > STALL_GAP
                last_text = now
            if frame.get("event") in ("done", "error"):
                return Run(events, size, now - started, worst, stalls)


def median_run(runs: list[Run]) -> Run:
    return Run(
        int(statistics.median(r.events for r in runs)),
        int(statistics.median(r.bytes for r in runs)),
        statistics.median(r.seconds for r in runs),
        statistics.median(r.worst_gap for r in runs),
        int(statistics.median(r.stalls for r in runs)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kbps", type=float, default=10.0)
    parser.add_argument("--stall-ms", type=float, default=300.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dskit-flow-"))
    sim_port, gw_port = free_port(), free_port()
    env = {**os.environ, "DSKIT_HOME": str(tmp)}
    env.pop("DEEPSEEK_API_KEY", None)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    sim = subprocess.Popen([str(DSKIT), "sim", "--port", str(sim_port), "--token-ms", "2"], **quiet)
    gateway = subprocess.Popen(
        [str(DSKIT), "serve", "--port", str(gw_port), "--upstream",
         f"http://127.0.0.1:{sim_port}", "--store", "memory",
         "--keys-db", str(tmp / "keys.sqlite3")], **quiet,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{gw_port}/readyz")
        where = f"127.0.0.1:{gw_port}"
        rows = {}
        for name, ack in (("without (no acks)", False), ("adaptive (acks)", True)):
            rng = random.Random(7)
            rows[name] = median_run(
                [read_answer(where, ack, args.kbps, args.stall_ms, rng) for _ in range(args.rounds)]
            )
    finally:
        gateway.terminate()
        sim.terminate()
    base = rows["without (no acks)"]
    print(f"\nreader at {args.kbps:g} KB/s with {args.stall_ms:g} ms stalls; medians of "
          f"{args.rounds} answers")  # fmt: skip
    print(f"{'mode':<20}{'events':>8}{'KB':>8}{'seconds':>9}{'worst gap':>11}"
          f"{'stalls':>8}{'x stalls':>10}")  # fmt: skip
    for name, run in rows.items():
        ratio = run.stalls / base.stalls if base.stalls else float("nan")
        print(f"{name:<20}{run.events:>8}{run.bytes / 1024:>8.1f}{run.seconds:>9.2f}"
              f"{run.worst_gap * 1000:>9.0f}ms{run.stalls:>8}{ratio:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
