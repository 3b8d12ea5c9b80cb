#!/usr/bin/env python3
"""What an answer's events cost in the stream log alone: memory against Redis, no HTTP.

    .venv/bin/python bench/answer_log.py               # 64 answers a round, 10 rounds
    .venv/bin/python bench/answer_log.py --answers 256 --rounds 4

In one process, as the gateway does it: each answer is created leased, its generation
posts 50 tokens 10 ms apart (the simulator's pace) and appends `done`, then finishes and
releases it; one reader per answer follows it through the SSE body (`sse_stream`, with a
write meter, into a send that drops the bytes). The answers of a round start spread over
one token's time. Printed per answer: this process' CPU, redis-server's (a server the
script starts on a free port), the append batches it took, and each log's CPU against
the memory log's, in the same run. The two logs take turns, three rounds of rounds each,
so a machine whose speed drifts drifts for both.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from dskit.gateway._metrics import Metrics
from dskit.gateway.backends._log import MemoryStreamLog, StreamLog
from dskit.gateway.backends._redis_log import RedisLogSettings, RedisStreamLog, connect
from dskit.gateway.edge._flow import WriteMeter
from dskit.gateway.edge._response import pieces
from dskit.gateway.edge._views import sse_stream
from gateway_overhead import cpu_seconds, free_port, wait_redis  # this script's neighbour

TOKENS = 50
TOKEN_SECONDS = 0.01
TURNS = 3  # each log measured this many times, in turns


async def one_answer(log: StreamLog, metrics: Metrics, answer_id: str, delay: float) -> None:
    async def drop(message: Any) -> None:
        return None

    await log.create(answer_id, f"s-{answer_id}", "w")
    meter = WriteMeter(lambda: 0)
    body = sse_stream(log, answer_id, 0, 15.0, 1000, metrics, meter)
    reader = asyncio.ensure_future(meter.metered(pieces(body))(drop))
    await asyncio.sleep(delay)
    for n in range(TOKENS):
        log.post(answer_id, "content", orjson.dumps({"text": f" token{n}"}))
        await asyncio.sleep(TOKEN_SECONDS)
    await log.append(answer_id, "done", b"{}")
    await log.finish(answer_id)
    await log.release(answer_id, "w")
    await reader


async def rounds(log: StreamLog, metrics: Metrics, answers: int, count: int, tag: str) -> None:
    for r in range(count):
        spread = [TOKEN_SECONDS * i / answers for i in range(answers)]
        await asyncio.gather(
            *(one_answer(log, metrics, f"{tag}r{r}a{i}", d) for i, d in enumerate(spread))
        )


def no_batches() -> int:
    return 0


async def measure(
    log: StreamLog, metrics: Metrics, redis_pid: int | None, args: argparse.Namespace, tag: str,
    batches: Callable[[], int] = no_batches,
) -> dict[str, float]:  # fmt: skip
    await rounds(log, metrics, args.answers, 1, f"warm{tag}")  # warm: scripts, connections
    sent, began = batches(), time.process_time()
    redis_began = cpu_seconds(redis_pid) if redis_pid else 0.0
    await rounds(log, metrics, args.answers, args.rounds, tag)
    n = args.answers * args.rounds
    return {
        "cpu": (time.process_time() - began) * 1000 / n,
        "redis": (cpu_seconds(redis_pid) - redis_began) * 1000 / n if redis_pid else 0.0,
        "batches": (batches() - sent) / n,
    }


async def run(args: argparse.Namespace, redis_url: str, redis_pid: int) -> None:
    metrics = Metrics()
    redis_log = RedisStreamLog(connect(redis_url), RedisLogSettings(namespace="bench-log"))
    found: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
    try:
        for turn in range(TURNS):
            found["memory"].append(
                await measure(MemoryStreamLog(), metrics, None, args, f"m{turn}")
            )
            counted = lambda: redis_log._appends.batches  # noqa: E731
            found["redis"].append(
                await measure(redis_log, metrics, redis_pid, args, f"r{turn}", counted)
            )
    finally:
        await redis_log.aclose()
    report(found, args)


def report(found: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    print(f"\n{args.answers} answers a round, {args.rounds} rounds, {TOKENS} tokens "
          f"{TOKEN_SECONDS * 1000:g} ms apart; medians of {TURNS} turns")  # fmt: skip
    print("| log | CPU ms/answer (this process) | redis-server ms/answer | together | "
          "x memory | append batches/answer |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    memory = statistics.median(row["cpu"] for row in found["memory"])
    for name, rows in found.items():
        cpu = statistics.median(row["cpu"] for row in rows)
        redis = statistics.median(row["redis"] for row in rows)
        spent = statistics.median(row["batches"] for row in rows)
        print(f"| {name} | {cpu:.3f} | {redis:.3f} | {cpu + redis:.3f} | "
              f"{(cpu + redis) / memory:.2f} | {spent:.1f} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=64, help="answers in flight a round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds measured per turn")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("this benchmark needs redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="dskit-bench-log-")
    command = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        wait_redis(port)
        asyncio.run(run(args, f"redis://127.0.0.1:{port}/0", server.pid))
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
