"""Session store costs: append latency per store, and the memory of a long session.

    .venv/bin/python bench/session_store.py [--appends 500] [--turns 100]

Append latency: one user message (about 200 characters) appended with its version check,
`--appends` times to one session, timed one by one; we report p50 and p99. SQLite runs
with WAL and synchronous=FULL (each append is fsynced: durable on return), on a temp
file. Redis uses REDIS_URL, else a redis-server started here on a free port (AOF with
appendfsync always, like the test fixture, and appendfsync everysec for comparison).

Memory: a 100-turn conversation held by a ChatSession on the MemoryStore, driven
through the offline simulator; we report the Python heap freed when the session is
dropped (tracemalloc) and the bytes of text in it, so the overhead per message is visible.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dskit.store import MemoryStore, SessionRecord, SessionStore, SQLiteStore, StoredMessage

TEXT = "How do I reset my router when the light blinks orange twice and then stays off? " * 3


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_appends(store: SessionStore, appends: int) -> tuple[float, float]:
    """p50 and p99 of one append, in milliseconds."""
    record = store.create(SessionRecord(system="bench"))
    version, samples = record.version, []
    for i in range(appends):
        message = StoredMessage({"role": "user", "content": f"{i} {TEXT}"})
        start = time.perf_counter()
        version = store.append(record.id, [message], expected_version=version)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), _percentile(samples, 0.99)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)  # polling a starting server's port, with a deadline
    raise RuntimeError("redis-server did not start")


@contextmanager
def redis_server(fsync: str) -> Iterator[str | None]:
    """A Redis URL: REDIS_URL, or a private redis-server, or None when neither exists."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir",
                directory, "--appendonly", "yes", "--appendfsync", fsync]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(port, time.monotonic() + 10)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def bench_stores(appends: int) -> list[tuple[str, str, str]]:
    rows = []
    stores: list[tuple[str, Callable[[], SessionStore]]] = [("memory", MemoryStore)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.sqlite3"
        stores.append(("sqlite (WAL, fsync each)", lambda: SQLiteStore(path)))
        for name, make in stores:
            store = make()
            p50, p99 = time_appends(store, appends)
            store.close()
            rows.append((name, f"{p50:.3f}", f"{p99:.3f}"))
    for fsync in ("always", "everysec"):
        with redis_server(fsync) as url:
            if url is None:
                rows.append((f"redis (aof {fsync})", "n/a", "n/a"))
                continue
            from dskit.store import RedisStore

            store = RedisStore(url, namespace=f"bench{os.getpid()}")
            p50, p99 = time_appends(store, appends)
            store.close()
            rows.append((f"redis (aof {fsync})", f"{p50:.3f}", f"{p99:.3f}"))
            if os.environ.get("REDIS_URL"):
                break
    return rows


def bench_memory(turns: int) -> tuple[int, int, int]:
    """Heap bytes held by a `turns`-turn in-memory session, its text bytes, its messages."""
    from dskit import ChatSession, DeepSeek
    from dskit.sim import SimServer

    with SimServer() as sim, DeepSeek(api_key="sk-bench-0000000", base_url=sim.base_url) as c:
        tracemalloc.start()
        session = ChatSession(c, system="You are a support agent.")
        for i in range(turns):
            session.send(f"turn {i}: {TEXT}")
        text = sum(len(m.content.encode()) for m in session.history)
        count = len(session.history)
        gc.collect()
        with_session = tracemalloc.get_traced_memory()[0]
        del session  # what this frees is what the session held (the simulator's own
        gc.collect()  # caches, in the same process, stay out of the number)
        held = with_session - tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return held, text, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--turns", type=int, default=100)
    args = parser.parse_args()

    print(f"append latency, one message per append, {args.appends} appends")
    print(f"{'store':<28}{'p50 ms':>10}{'p99 ms':>10}")
    for name, p50, p99 in bench_stores(args.appends):
        print(f"{name:<28}{p50:>10}{p99:>10}")
    held, text, count = bench_memory(args.turns)
    print()
    print(f"memory of a {args.turns}-turn in-memory session ({count} messages)")
    print(f"{'python heap held':<28}{held / 1024:>10.1f} KiB")
    print(f"{'text in it':<28}{text / 1024:>10.1f} KiB")
    print(f"{'overhead per message':<28}{(held - text) / count:>10.0f} B")


if __name__ == "__main__":
    main()
