"""Throughput of the offline simulator: open streams held, SSE events per second, memory.

    .venv/bin/python bench/sim_throughput.py [--streams 1000] [--seconds 5] [--workers 32]

The simulator runs as `dskit sim` in its own process pinned to one core (the client, an
async httpx2 load generator, runs here on the other cores), so its CPU time and memory
are its own. Three measurements, printed as one table:

- streams held: N streams opened at once with long token delays; each must deliver its
  first chunk while all are open (the server holds them on one event loop);
- memory per open stream: the server's RSS growth while they are held, divided by N;
- events per second: zero-latency streams from concurrent workers for a few seconds;
  events counted from the bytes received, divided by wall time and by server CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import httpx2

AUTH = {"Authorization": "Bearer sk-bench"}


def start_sim(core: int | None) -> tuple[subprocess.Popen[str], str]:
    code = "from dskit.cli import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "sim"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(process.pid, {core})
    return process, url


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hold_streams(url: str, count: int, pid: int) -> tuple[int, float, float]:
    """Open `count` slow streams; return how many delivered, seconds to open, KiB/stream."""
    limits = httpx2.Limits(max_connections=count + 10, max_keepalive_connections=0)
    timeout = httpx2.Timeout(120.0)
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "stream": True,
        "messages": [{"role": "user", "content": "hold on"}],
    }
    headers = {**AUTH, "X-Sim-Token-Ms": "1000"}
    before = rss_kib(pid)
    release = asyncio.Event()
    all_open = asyncio.Event()
    opened = 0

    async def one(client: httpx2.AsyncClient) -> None:
        nonlocal opened
        async with client.stream("POST", "/chat/completions", json=body, headers=headers) as r:
            chunks = r.aiter_raw()
            await chunks.__anext__()
            opened += 1
            if opened == count:
                all_open.set()
            await release.wait()
            await chunks.aclose()

    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(one(client)) for _ in range(count)]
        waiter = asyncio.create_task(all_open.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        took = time.perf_counter() - started
        during = rss_kib(pid)
        held = opened
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return held, took, (during - before) / max(held, 1)


async def events_per_second(
    url: str, seconds: float, workers: int, pid: int
) -> tuple[float, float, float]:
    """Zero-latency streams for `seconds`: (events/s wall, events per server CPU s, req/s)."""
    body = {
        "model": "deepseek-flash",
        "stream": True,
        "messages": [{"role": "user", "content": "count the events"}],
    }
    events = requests = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx2.AsyncClient, index: int) -> None:
        nonlocal events, requests
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            payload = {**body, "messages": [{"role": "user", "content": f"q {index} {n % 50}"}]}
            response = await client.post("/chat/completions", json=payload, headers=AUTH)
            events += response.content.count(b"data: ")
            requests += 1

    limits = httpx2.Limits(max_connections=workers)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker(client, i) for i in range(workers)))
        wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
    return events / wall, events / max(cpu, 1e-9), requests / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) > 1:
        os.sched_setaffinity(0, set(cores[1:]))
    process, url = start_sim(cores[0] if len(cores) > 1 else None)
    try:
        held, took, per_stream = asyncio.run(hold_streams(url, args.streams, process.pid))
        rate, per_cpu, rps = asyncio.run(
            events_per_second(url, args.seconds, args.workers, process.pid)
        )
    finally:
        process.terminate()
        process.wait(10)
    rows = [
        ("open streams held at once", f"{held} / {args.streams}", f"opened in {took:.2f} s"),
        ("server memory per open stream", f"{per_stream:.1f} KiB", "RSS growth / streams"),
        ("SSE events per second (wall)", f"{rate:,.0f}", f"{rps:,.0f} requests/s"),
        ("SSE events per server CPU second", f"{per_cpu:,.0f}", "server pinned to one core"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>16}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")


if __name__ == "__main__":
    main()
