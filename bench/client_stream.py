"""CPU per streamed chunk and import time: dskit against the official openai package.

    .venv/bin/python bench/client_stream.py [--chunks 10000] [--rounds 5]

A child process serves one pre-encoded DeepSeek-format stream (role chunk, N content
chunks, a finish chunk with usage, [DONE]) over loopback HTTP/1.1 as fast as the socket
takes it, so the CPU measured in this process is the client's alone. Each client consumes
the whole stream `--rounds` times; we report the best round's CPU time per chunk.
Import times are the median over fresh interpreters of `import X` minus an empty start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

TARGET_CPU_RATIO = 0.10  # dskit at most 1/10 of openai's CPU per chunk
TARGET_IMPORT_RATIO = 0.20  # import dskit at most 1/5 of import openai


def _chunk(delta: dict[str, object], finish: str | None = None, usage: object = None) -> bytes:
    body = {
        "id": "0f6a1c52-5d2e-4f0e-9d8e-2b7b8a4d1c11",
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def build_stream(chunks: int) -> bytes:
    words = ["river ", "stone ", "light ", "harbour ", "quiet ", "market ", "number ", "的"]
    parts = [_chunk({"role": "assistant", "content": ""})]
    parts += [_chunk({"content": words[i % len(words)]}) for i in range(chunks)]
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": chunks,
        "total_tokens": chunks + 10,
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": 10,
    }
    parts.append(_chunk({"content": ""}, "stop", usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def serve(port_queue: multiprocessing.Queue[int], chunks: int) -> None:
    """A minimal HTTP/1.1 server answering every POST with the same SSE stream."""
    body = build_stream(chunks)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def cpu_of(consume: Callable[[], int], rounds: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(rounds):
        start = time.process_time()
        count = consume()
        best = min(best, time.process_time() - start)
    return best, count


def dskit_consumer(base_url: str) -> Callable[[], int]:
    from dskit import DeepSeek

    client = DeepSeek("sk-bench-000000", base_url=base_url)

    def consume() -> int:
        n = 0
        with client.stream("bench") as stream:
            for event in stream:
                if event.type == "content":
                    n += 1
        return n

    return consume


def openai_consumer(base_url: str) -> Callable[[], int]:
    import openai

    client = openai.OpenAI(api_key="sk-bench-000000", base_url=base_url)

    def consume() -> int:
        n = 0
        stream = client.chat.completions.create(
            model="deepseek-flash",
            thinking=False,
            messages=[{"role": "user", "content": "bench"}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                n += 1
        return n

    return consume


def import_time(statement: str, runs: int = 7) -> float:
    def once(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
        return time.perf_counter() - start

    base = statistics.median(once("pass") for _ in range(runs))
    return max(0.0, statistics.median(once(statement) for _ in range(runs)) - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(ports, args.chunks), daemon=True)
    server.start()
    base_url = f"http://127.0.0.1:{ports.get(timeout=30)}"
    try:
        ours, n_ours = cpu_of(dskit_consumer(base_url), args.rounds)
        peer, n_peer = cpu_of(openai_consumer(base_url), args.rounds)
    finally:
        server.terminate()
    assert n_ours == n_peer == args.chunks, (n_ours, n_peer)

    imp_ours = import_time("import dskit")
    imp_ours_client = import_time("from dskit import DeepSeek; DeepSeek('sk-x-000000')")
    imp_peer = import_time("import openai")
    imp_peer_client = import_time("import openai; openai.OpenAI(api_key='sk-x-000000')")

    us = 1e6 / args.chunks
    print(f"{args.chunks} chunks over loopback, best of {args.rounds} rounds, CPU of the client")
    print(f"{'measure':<38}{'dskit':>12}{'openai':>12}{'ratio':>10}{'target':>10}")
    rows = [
        ("CPU per chunk (us)", ours * us, peer * us, TARGET_CPU_RATIO),
        ("import (ms)", imp_ours * 1e3, imp_peer * 1e3, TARGET_IMPORT_RATIO),
        ("import + construct a client (ms)", imp_ours_client * 1e3, imp_peer_client * 1e3, None),
    ]
    for name, a, b, target in rows:
        goal = f"<= {target:.2f}" if target else "-"
        print(f"{name:<38}{a:>12.2f}{b:>12.2f}{a / b:>10.3f}{goal:>10}")


if __name__ == "__main__":
    main()
