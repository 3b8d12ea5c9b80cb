#!/usr/bin/env python3
"""What a session answer costs the gateway, against the plain relay, in one run.

    .venv/bin/python bench/session_overhead.py                  # 64 and 256 in flight
    .venv/bin/python bench/session_overhead.py --levels 64 --seconds 10 --redis-burst 1000

Regime (a) of bench/gateway_overhead.py: the simulator answers 100 ms to first token, then
50 tokens 10 ms apart. Targets, each a `dskit serve` process in front of one simulator:
`/v1/chat/completions` streamed (the relay: the floor the session paths are compared
with), and `POST /v1/sessions/{id}/messages` streamed on the memory store, on SQLite and
on Redis (`--redis`, the answer log and the store in a redis-server of its own). For each
level N, N workers keep one answer each in flight for `--seconds` (a closed loop; a worker
takes a new session every 10 answers so prompts stay alike). Printed per target: answers
completed, failures, CPU per answer (the gateway's process, plus redis-server's on Redis)
and its ratio to the relay's, and time to first token p50/p99 and what it adds to the
simulator's own (measured direct, same run). `--redis-burst N` also starts N session
answers at once on Redis and counts how many complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

DSKIT = Path(sys.executable).parent / "dskit"
TTFT_MS, TOKEN_MS, TOKENS = 100, 10, 50
QUESTION = "Tell me about rivers"
AUTH = {"Authorization": "Bearer sk-bench"}
TEXT_CHUNK = re.compile(r'"content":"[^"]')  # a relayed chunk with text (not the role's)
CHAT = {"model": "deepseek-flash", "thinking": {"type": "disabled"}, "max_tokens": TOKENS}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(url, timeout=1, headers=AUTH).status_code == 200:
                return
        time.sleep(0.1)  # a bench waiting for a server it started, not a test
    raise RuntimeError(f"{url} not ready")


@dataclass
class Target:
    name: str
    url: str
    pids: list[int]
    sessions: bool


@dataclass
class Tally:
    ttfts: list[float] = field(default_factory=list)
    done: int = 0
    failed: int = 0


@contextlib.contextmanager
def process(command: list[str], **env: str) -> Iterator[subprocess.Popen[bytes]]:
    full = {**os.environ, **env}
    full.pop("DEEPSEEK_API_KEY", None)
    proc = subprocess.Popen(command, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


async def one_answer(http: httpx2.AsyncClient, target: Target, session: str | None) -> float:
    """Time to the first content event of one streamed answer (its end is awaited)."""
    started = time.monotonic()
    if target.sessions:
        url, body = f"/v1/sessions/{session}/messages", {"content": QUESTION, "stream": True}
    else:
        url = "/v1/chat/completions"
        body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    first = 0.0
    async with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}")
        async for line in response.aiter_lines():
            if not first and (line == "event: content" or TEXT_CHUNK.search(line)):
                first = time.monotonic() - started
            if line.startswith("event: done") or line == "data: [DONE]":
                break
            if line.startswith("event: error"):
                raise RuntimeError("error event")
    return first


async def new_session(http: httpx2.AsyncClient) -> str:
    created = await http.post(
        "/v1/sessions", json={"parameters": {"thinking": False, "max_tokens": TOKENS}}
    )
    return str(created.json()["id"])


async def worker(http: httpx2.AsyncClient, target: Target, until: float, tally: Tally) -> None:
    session, used = None, 0
    while time.monotonic() < until:
        try:
            if target.sessions and (session is None or used >= 10):
                session, used = await new_session(http), 0
            tally.ttfts.append(await one_answer(http, target, session))
            tally.done += 1
            used += 1
        except Exception:
            tally.failed += 1
            session = None


async def closed_loop(target: Target, workers: int, seconds: float) -> tuple[Tally, float]:
    limits = httpx2.Limits(max_connections=workers + 8, max_keepalive_connections=workers + 8)
    async with httpx2.AsyncClient(
        base_url=target.url, timeout=60, limits=limits, headers=AUTH
    ) as http:
        tally = Tally()
        cpu0 = sum(cpu_seconds(p) for p in target.pids)
        until = time.monotonic() + seconds
        await asyncio.gather(*(worker(http, target, until, tally) for _ in range(workers)))
        cpu = sum(cpu_seconds(p) for p in target.pids) - cpu0
    return tally, cpu


async def burst(target: Target, count: int) -> Tally:
    limits = httpx2.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    async with httpx2.AsyncClient(
        base_url=target.url, timeout=120, limits=limits, headers=AUTH
    ) as http:
        sessions = [await new_session(http) for _ in range(count)]
        tally = Tally()

        async def one(session: str) -> None:
            try:
                tally.ttfts.append(await one_answer(http, target, session))
                tally.done += 1
            except Exception:
                tally.failed += 1

        await asyncio.gather(*(one(s) for s in sessions))
    return tally


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(level: int, rows: list[tuple[str, Tally, float]], direct: Tally) -> None:
    base = next(cpu / max(t.done, 1) for name, t, cpu in rows if name == "relay")
    d50, d99 = pct(direct.ttfts, 0.5), pct(direct.ttfts, 0.99)
    print(
        f"\n{level} answers in flight (simulator direct: TTFT p50 {d50:.0f} ms, p99 {d99:.0f} ms)"
    )
    print(f"{'target':<16}{'answers':>8}{'failed':>7}{'CPU ms/ans':>11}{'x relay':>8}"
          f"{'TTFT p50':>9}{'p99':>7}{'+p50':>7}{'+p99':>7}")  # fmt: skip
    for name, tally, cpu in rows:
        per = cpu / max(tally.done, 1)
        p50, p99 = pct(tally.ttfts, 0.5), pct(tally.ttfts, 0.99)
        print(f"{name:<16}{tally.done:>8}{tally.failed:>7}{per * 1000:>11.2f}{per / base:>8.2f}"
              f"{p50:>9.0f}{p99:>7.0f}{p50 - d50:>7.0f}{p99 - d99:>7.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="64,256")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--redis-burst", type=int, default=0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dskit-bench-"))
    sim_port, redis_port = free_port(), free_port()
    redis_bin = shutil.which("redis-server")
    assert redis_bin, "redis-server is needed for the Redis row"
    with contextlib.ExitStack() as stack:
        stack.enter_context(process([str(DSKIT), "sim", "--port", str(sim_port), "--ttft-ms",
                                     str(TTFT_MS), "--token-ms", str(TOKEN_MS)]))  # fmt: skip
        redis = stack.enter_context(process([redis_bin, "--port", str(redis_port), "--save", "",
                                             "--appendonly", "no", "--dir", str(tmp)]))  # fmt: skip
        sim_url, redis_url = f"http://127.0.0.1:{sim_port}", f"redis://127.0.0.1:{redis_port}/0"
        wait_ready(sim_url + "/models")
        targets = [Target("direct", sim_url, [], False)]
        stores = [("relay", "memory", []), ("sessions memory", "memory", []),
                  ("sessions sqlite", str(tmp / "s.sqlite3"), []),
                  ("sessions redis", redis_url, ["--redis", redis_url])]  # fmt: skip
        for name, store, extra in stores:
            port = free_port()
            proc = stack.enter_context(process(
                [str(DSKIT), "serve", "--port", str(port), "--upstream", sim_url, "--store", store,
                 "--keys-db", str(tmp / f"keys-{port}.sqlite3"), "--cache-ttl", "0", *extra],
                DSKIT_HOME=str(tmp),
            ))  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            wait_ready(url + "/readyz")
            pids = [proc.pid] + ([redis.pid] if "redis" in name else [])
            targets.append(Target(name, url, pids, name != "relay"))
        for level in (int(x) for x in args.levels.split(",")):
            direct, _ = asyncio.run(closed_loop(targets[0], level, args.seconds))
            rows = []
            for target in targets[1:]:
                tally, cpu = asyncio.run(closed_loop(target, level, args.seconds))
                rows.append((target.name, tally, cpu))
            report(level, rows, direct)
        if args.redis_burst:
            tally = asyncio.run(burst(targets[-1], args.redis_burst))
            print(f"\n{args.redis_burst} session answers started at once on Redis: "
                  f"{tally.done} completed, {tally.failed} failed; TTFT p50 "
                  f"{pct(tally.ttfts, 0.5):.0f} ms, "
                  f"p99 {pct(tally.ttfts, 0.99):.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
