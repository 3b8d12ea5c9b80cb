#!/usr/bin/env python3
"""What a proxy adds to a stream: direct to the simulator vs dskit's gateway vs LiteLLM.

    .venv/bin/python bench/gateway_overhead.py            # both regimes, three tables (~5 min)
    .venv/bin/python bench/gateway_overhead.py --quick    # fewer rounds, for a smoke run
    .venv/bin/python bench/gateway_overhead.py --only a --no-litellm --sessions \
        --targets direct,gateway --levels 64,256 --no-burst --redis-burst 1000

Every server runs in its own process on loopback: the simulator (`dskit sim`), the gateway
(`dskit serve --upstream <sim> --store memory`) and LiteLLM's proxy (`litellm[proxy]==1.90.0`
installed on first run into bench/.venv-litellm, one worker) in front of the same simulator.
Two floors run in front of it too, so each table shows what this machine allows a proxy:
`tcp-floor` (tcp_floor.py: bytes copied between sockets, no HTTP) and `asgi-floor`
(asgi_floor.py: the gateway's stack, uvicorn and dskit's H1 pool, forwarding the body
untouched). The last column is the CPU a proxy's process used per completed stream.
The load generator is a minimal asyncio HTTP/1.1 client on uvloop (one connection per
stream, raw chunked decoding; after the first content chunk the rest of the body is read
as raw bytes up to its end) so that it costs the same, and little, on every path.

(a) realistic upstream: 100 ms to first token, 50 tokens 10 ms apart. At 1, 64, 256 and
    1,000 concurrent streams: time to first token (first non-empty content) and total time,
    p50 and p99, and what each proxy adds to the direct figures. Two tables:
    - steady state (the primary one): a closed loop of N workers, each starting a new
      stream when its previous one ends, so N streams stay in flight. Workers start
      spread over one stream lifetime; after a warm-up (every worker has finished a
      stream, and at least two lifetimes have passed since the start) the streams
      started within a fixed window (--window, longer at low N) are measured. A run that
      never warms up within its 45 s budget (the target cannot keep N streams moving)
      is reported as such; measured streams unfinished at the budget as cut off.
    - burst: all N streams started at the same instant (the worst case).
    Before every row the script waits until the servers are idle, so a target still
    working off its previous row does not slow the next one.
(b) saturation: a zero-latency simulator, 64 clients in a closed loop for a fixed time:
    streams and chunks relayed per second.

`--sessions` adds to regime (a) the gateway's session answers (`POST
/v1/sessions/{id}/messages`, streamed) on the memory store, on SQLite and on Redis (`--redis`:
the answer log and the store in a redis-server the script starts), each its own `dskit
serve --cache-ttl 0`; a worker asks in its own session and takes a new one every 10
answers, so prompts stay alike. A last table puts them beside the relay (the `gateway`
row, `/v1/chat/completions`): CPU per answer (the gateway's process, plus redis-server's
on Redis) and its ratio to the relay's, and the time to first token each adds to direct,
with the issue's targets (`--sessions memory,redis`: only those stores). `--redis-burst N`
then starts N session answers at once on Redis and counts those that complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_SPEC = "litellm[proxy]==1.90.0"
DSKIT = Path(sys.executable).parent / "dskit"
FLOOR = Path(__file__).resolve().parent / "tcp_floor.py"
ASGI_FLOOR = Path(__file__).resolve().parent / "asgi_floor.py"
TOKENS = 50
LEVELS = (1, 64, 256, 1000)


# ---- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_litellm() -> Path:
    """LiteLLM's proxy in its own virtual environment (created once, git-ignored)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print(f"installing {LITELLM_SPEC} into {LITELLM_VENV} (first run only)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    pip = LITELLM_VENV / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", LITELLM_SPEC], check=True)
    return binary


def wait_http(port: int, path: str, timeout: float = 90.0, expect: bytes = b"HTTP/1.1 200") -> None:
    """Poll until `GET path` answers `expect` (or fail after `timeout`)."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(request)
            if s.recv(64).startswith(expect):
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port}{path} within {timeout}s")


@dataclass
class Services:
    """The targets of one regime; stopped together."""

    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # by name
    ports: dict[str, int] = field(default_factory=dict)  # the targets, in table order
    sessions: set[str] = field(default_factory=set)  # targets serving session answers
    helpers: dict[str, list[str]] = field(default_factory=dict)  # whose CPU a target adds

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )

    def cpu_pids(self, name: str) -> list[int]:
        """The processes a target's CPU is counted over (direct: none)."""
        names = [name, *self.helpers.get(name, [])] if name in self.procs else []
        return [self.procs[n].pid for n in names]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def services(
    ttft_ms: int, token_ms: int, litellm: Path | None, targets: frozenset[str] | None = None,
    sessions: tuple[str, ...] = (),
) -> Iterator[Services]:  # fmt: skip
    """The simulator and every target in front of it (`targets`: only these, else all)."""
    workdir = Path(tempfile.mkdtemp(prefix="dskit-bench-"))
    env = {**os.environ, "DSKIT_HOME": str(workdir)}
    env.pop("DEEPSEEK_API_KEY", None)
    env.pop("DEEPSEEK_BASE_URL", None)
    svc = Services(workdir)
    wanted = targets.__contains__ if targets else (lambda _: True)
    try:
        sim = free_port()
        svc.ports["direct"] = sim
        svc.spawn("sim", [str(DSKIT), "sim", "--port", str(sim), "--ttft-ms", str(ttft_ms),
                          "--token-ms", str(token_ms)], env)  # fmt: skip
        wait_http(sim, "/models", expect=b"HTTP/1.1 ")
        if wanted("tcp-floor"):
            svc.ports["tcp-floor"] = port = free_port()
            svc.spawn("tcp-floor", [sys.executable, str(FLOOR), str(port), str(sim)], env)
            wait_http(port, "/models", expect=b"HTTP/1.1 ")
        if wanted("asgi-floor"):
            svc.ports["asgi-floor"] = port = free_port()
            svc.spawn("asgi-floor", [sys.executable, str(ASGI_FLOOR), str(port),
                                     f"http://127.0.0.1:{sim}"], env)  # fmt: skip
            wait_http(port, "/readyz")
        if wanted("gateway"):
            svc.ports["gateway"] = serve(svc, "gateway", sim, ["--store", "memory"], env)
        if litellm is not None and wanted("litellm"):
            svc.ports["litellm"] = start_litellm(svc, litellm, sim)
        if sessions:
            start_sessions(svc, sim, env, sessions)
        yield svc
    finally:
        svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def serve(svc: Services, name: str, sim: int, extra: list[str], env: dict[str, str]) -> int:
    """A `dskit serve` in front of the simulator, as target `name` (its port)."""
    port = free_port()
    svc.spawn(name, [str(DSKIT), "serve", "--port", str(port), "--upstream",
                     f"http://127.0.0.1:{sim}", "--log-level", "warning", *extra], env)  # fmt: skip
    wait_http(port, "/readyz")
    return port


STORES = ("memory", "sqlite", "redis")


def start_sessions(svc: Services, sim: int, env: dict[str, str], stores: tuple[str, ...]) -> None:
    """The session targets, one `dskit serve` per store: memory, SQLite, and Redis (with
    a redis-server of its own)."""
    options = {"memory": ["--store", "memory"],
               "sqlite": ["--store", str(svc.workdir / "sessions.sqlite3")]}  # fmt: skip
    if "redis" in stores:
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise SystemExit("the Redis sessions need redis-server")
        redis_port = free_port()
        svc.spawn("redis-server", [redis_bin, "--port", str(redis_port), "--save", "",
                                   "--appendonly", "no", "--dir", str(svc.workdir)])  # fmt: skip
        wait_redis(redis_port)
        url = f"redis://127.0.0.1:{redis_port}/0"
        options["redis"] = ["--store", url, "--redis", url]
        svc.helpers["sessions redis"] = ["redis-server"]
    for store in stores:
        name = f"sessions {store}"
        keys = ["--keys-db", str(svc.workdir / f"keys-{store}.sqlite3"), "--cache-ttl", "0"]
        svc.ports[name] = serve(svc, name, sim, [*options[store], *keys], env)
        svc.sessions.add(name)


def wait_redis(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"redis-server on port {port} did not answer within {timeout}s")


def start_litellm(svc: Services, binary: Path, sim_port: int) -> int:
    port = free_port()
    config = svc.workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: deepseek-chat\n    litellm_params:\n"
        "      model: openai/deepseek-chat\n"
        f"      api_base: http://127.0.0.1:{sim_port}\n      api_key: sk-bench\n"
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False"}  # fmt: skip
    args = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]  # fmt: skip
    svc.spawn("litellm", args, env)
    wait_http(port, "/health/liveliness", timeout=180)
    return port


# ---- the load generator ---------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    ttft: float
    total: float
    chunks: int


def request_bytes(port: int, prompt: str) -> bytes:
    body = orjson.dumps({
        "model": "deepseek-flash", "thinking": {"type": "disabled"}, "stream": True,
        "max_tokens": TOKENS,
        "messages": [{"role": "user", "content": prompt}],
    })  # fmt: skip
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_parts(reader: asyncio.StreamReader, chunked: bool) -> bytes | None:
    """The next piece of the body (None at its end)."""
    if not chunked:
        data = await reader.read(65536)
        return data or None
    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
    if size == 0:
        return None
    data = await reader.readexactly(size + 2)
    return data[:-2]


def content_events(buffer: bytearray) -> Iterator[bytes]:
    """Complete `data:` payloads in the buffer (consumed), CRLF or LF framed."""
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return
        event = bytes(buffer[:end]).strip()
        del buffer[: end + 2]
        if event.startswith(b"data:"):
            yield event[5:].strip()


def has_content(payload: bytes) -> bool:
    if payload == b"[DONE]" or b'"content"' not in payload:
        return False
    choices = orjson.loads(payload).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


async def one_stream(port: int, request: bytes, count: bool = True) -> Sample:
    """One stream. With `count=False` only the first content chunk is parsed; the rest is
    read as raw bytes until the end of the body, so the load generator stays cheap."""
    started = time.perf_counter()
    async with _answered(port, request) as (reader, head):
        chunked = b"transfer-encoding: chunked" in head
        buffer, ttft, chunks = bytearray(), 0.0, 0
        while (data := await read_parts(reader, chunked)) is not None:
            buffer += data.replace(b"\r\n", b"\n")
            for payload in content_events(buffer):
                if payload == b"[DONE]":
                    return Sample(ttft, time.perf_counter() - started, chunks)
                if has_content(payload):
                    chunks += 1
                    ttft = ttft or time.perf_counter() - started
            if ttft and not count:
                await drain(reader, chunked, bytes(buffer))
                return Sample(ttft, time.perf_counter() - started, -1)
        raise RuntimeError("stream ended without [DONE]")


@contextlib.asynccontextmanager
async def _answered(
    port: int, request: bytes, ok: bytes = b"HTTP/1.1 200"
) -> AsyncIterator[tuple[asyncio.StreamReader, bytes]]:
    """A connection that sent `request` and read a head starting with `ok`: its reader and
    the head (lower case); closed after."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(ok):
            raise RuntimeError(head[:200].decode(errors="replace"))
        yield reader, head.lower()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def drain(
    reader: asyncio.StreamReader, chunked: bool, seen: bytes, end: bytes = b"[DONE]",
    keep: int = 64,
) -> None:  # fmt: skip
    """Read to the end of the body: the last chunk (`0` CRLF CRLF) or EOF; its last `keep`
    bytes must carry `end`. (A content chunk ends with `}` and a blank line, never with
    `0`.)"""
    tail = seen[-keep:]
    while True:
        if chunked and tail.endswith(b"\r\n0\r\n\r\n"):
            break
        data = await reader.read(65536)
        if not data:
            break
        tail = (tail + data[-keep:])[-keep:]
    if end not in tail:
        raise RuntimeError(f"stream ended without {end.decode()}")


# ---- session answers ------------------------------------------------------------------

Asker = Callable[[], Awaitable[Sample]]  # one stream, timed
SESSION_TURNS = 10  # answers a worker asks in one session before it takes a new one
SESSION_PARAMS = {"parameters": {"thinking": False, "max_tokens": TOKENS}}


def post_bytes(port: int, path: str, body: bytes, stream: bool = False) -> bytes:
    accept = "text/event-stream" if stream else "application/json"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
        f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def post_json(port: int, path: str, body: dict[str, Any]) -> Any:
    """One POST on a connection of its own; its JSON answer."""
    request = post_bytes(port, path, orjson.dumps(body))
    async with _answered(port, request, ok=b"HTTP/1.1 2") as (reader, head):
        length = head.split(b"content-length:")[1].split(b"\r\n")[0]
        return orjson.loads(await reader.readexactly(int(length)))


async def session_stream(port: int, request: bytes) -> Sample:
    """One streamed session answer: timed to its first `content` event, then read as raw
    bytes to the end of the body, which must end with its `done` event."""
    started = time.perf_counter()
    async with _answered(port, request) as (reader, head):
        chunked = b"transfer-encoding: chunked" in head
        buffer = bytearray()
        while (data := await read_parts(reader, chunked)) is not None:
            buffer += data
            if b"\nevent: content\n" in buffer:
                ttft = time.perf_counter() - started
                await drain(reader, chunked, bytes(buffer), b"\nevent: done\n", 4096)
                return Sample(ttft, time.perf_counter() - started, -1)
            if b"\nevent: error\n" in buffer:
                raise RuntimeError(bytes(buffer[-300:]).decode(errors="replace"))
        raise RuntimeError("the answer ended before its first content event")


@dataclass
class SessionAsker:
    """One worker's session answers, a new session every SESSION_TURNS answers."""

    port: int
    prompt: str
    session: str | None = None
    asked: int = 0

    async def open(self) -> None:
        created = await post_json(self.port, "/v1/sessions", SESSION_PARAMS)
        self.session, self.asked = str(created["id"]), 0

    async def __call__(self) -> Sample:
        if self.session is None or self.asked >= SESSION_TURNS:
            await self.open()
        self.asked += 1
        path = f"/v1/sessions/{self.session}/messages"
        body = orjson.dumps({"content": self.prompt, "stream": True})
        try:
            return await session_stream(self.port, post_bytes(self.port, path, body, True))
        except Exception:
            self.session = None  # a failed answer may leave it busy: start afresh
            raise


def askers(svc: Services, prompt: str) -> dict[str, Callable[[], Asker]]:
    """For every target, how a worker gets its asker: chat targets repeat one request;
    session targets ask in sessions of their own."""
    made: dict[str, Callable[[], Asker]] = {}
    for name, port in svc.ports.items():
        if name in svc.sessions:
            made[name] = functools.partial(SessionAsker, port, prompt)
        else:
            ask = functools.partial(one_stream, port, request_bytes(port, prompt), count=False)
            made[name] = _repeat(ask)
    return made


def _repeat(ask: Asker) -> Callable[[], Asker]:
    return lambda: ask


async def warm_up(make: Callable[[], Asker], count: int = 16) -> None:
    await asyncio.gather(*(make()() for _ in range(count)))


async def level(port: int, request: bytes, concurrency: int, rounds: int) -> list[Sample]:
    samples: list[Sample] = []
    for _ in range(rounds):
        batch = await asyncio.gather(*(one_stream(port, request) for _ in range(concurrency)))
        samples += batch
    return samples


async def saturate(port: int, request: bytes, clients: int, seconds: float) -> tuple[int, int]:
    """Closed loop: (streams completed, content chunks received) within `seconds`."""
    deadline = time.perf_counter() + seconds
    done = [0, 0]

    async def client() -> None:
        while time.perf_counter() < deadline:
            sample = await one_stream(port, request)
            done[0] += 1
            done[1] += sample.chunks

    await asyncio.gather(*(client() for _ in range(clients)))
    return done[0], done[1]


# ---- reporting ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def find_prompt(port: int) -> str:
    """A prompt the simulator answers with at least TOKENS pieces (so every stream is 50)."""
    for n in range(200):
        prompt = f"Write a long paragraph about rivers, take {n}."
        sample = asyncio.run(one_stream(port, request_bytes(port, prompt)))
        if sample.chunks >= TOKENS:
            return prompt
    raise RuntimeError("no prompt gave a long enough answer")


def realistic(svc: Services, args: argparse.Namespace) -> None:
    quick, levels, repeat = args.quick, args.levels, args.repeat
    window = 1.0 if quick else args.window
    prompt = find_prompt(svc.ports["direct"])
    makers = askers(svc, prompt)
    for make in makers.values():
        asyncio.run(warm_up(make))  # every target once
    print("\n(a) realistic upstream: TTFT 100 ms, 50 tokens x 10 ms; times in ms")
    print(f"\nsteady state: N streams kept in flight (closed loop), {window:g} s window"
          f" (longer at low N), load average {_load()}")  # fmt: skip
    _header()
    steady: dict[tuple[int, str], list[dict[str, float]]] = {}
    for concurrency in (n for n in levels for _ in range(repeat)):
        base: dict[str, float] = {}
        for name, make in makers.items():
            # at least ~20 streams measured at low N
            span = max(window, 20 * LIFETIME / concurrency)
            settle(svc)
            loop = ClosedLoop(make, concurrency, span)
            row = measured_cpu(svc, name, loop.run())
            steady.setdefault((concurrency, name), []).append(row)
            print(_row(concurrency, name, row, base), flush=True)
            row.update({f"direct_{k}": v for k, v in base.items() if k.startswith("ttft")})
    if svc.sessions:
        session_table(steady, levels)
    if not args.no_burst:
        bursts(svc, makers, levels, quick)
    if args.redis_burst and "sessions redis" in makers:
        redis_burst(svc, prompt, args.redis_burst)


def bursts(
    svc: Services, makers: dict[str, Callable[[], Asker]], levels: tuple[int, ...], quick: bool
) -> None:
    print(f"\nburst: all N started at once (worst case), load average {_load()}")
    _header()
    for concurrency in levels:
        rounds = 1 if quick else {1: 10, 64: 3, 256: 2}.get(concurrency, 1)
        base: dict[str, float] = {}
        for name, make in makers.items():
            settle(svc)
            burst = _burst(make, concurrency, rounds)
            row = measured_cpu(svc, name, burst)
            print(_row(concurrency, name, row, base), flush=True)


# what the issue asks of session answers against the relay: CPU per answer at most this
# many times the relay's, and at 64 in flight at most this much added p99 TTFT (ms)
SESSION_TARGETS = {"sessions memory": (1.5, 10.0), "sessions sqlite": (2.0, 10.0),
                   "sessions redis": (2.5, 20.0)}  # fmt: skip
P99_LEVEL = 64


def session_table(
    steady: dict[tuple[int, str], list[dict[str, float]]], levels: tuple[int, ...]
) -> None:
    """One row per target and steady-state run (each against the relay's row of the same
    run); with `--repeat`, a median row after them: this machine's speed drifts by a
    third within minutes, so one run's ratio is one draw."""
    print(f"\nsession answers against the relay (`gateway`), steady state above, load average"
          f" {_load()}")  # fmt: skip
    print("| in flight | target | answers | failed | CPU ms/answer | x relay | CPU target"
          " | added TTFT p50 / p99 | p99 target |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for concurrency in levels:
        relays = steady.get((concurrency, "gateway"), [])
        for name in ("gateway", *SESSION_TARGETS):
            rows = steady.get((concurrency, name), [])
            for run, row in enumerate(rows):
                relay = relays[run].get("cpu") if run < len(relays) else None
                print(_session_row(concurrency, name, row, relay))
            if len(rows) > 1:
                print(_session_row(concurrency, name, *_medians(rows, relays)))


def _medians(
    rows: list[dict[str, float]], relays: list[dict[str, float]]
) -> tuple[dict[str, float], float | None]:
    """A target's runs as one row of medians (the CPU ratio: the median of each run's own
    ratio), and the relay's CPU that gives that ratio."""
    shared = set.intersection(*(set(r) for r in rows)) - {"cpu", "warm"}
    merged = {key: statistics.median(r[key] for r in rows) for key in shared}
    merged["n"] = sum(r.get("n", 0) for r in rows)
    merged["failed"] = sum(r.get("failed", 0) for r in rows)
    merged["median_of"] = len(rows)
    pairs = [(r["cpu"], relay["cpu"]) for r, relay in zip(rows, relays, strict=False)
             if r.get("cpu") and relay.get("cpu")]  # fmt: skip
    if not pairs:
        return merged, None
    merged["cpu"] = statistics.median(cpu for cpu, _ in pairs)
    ratio = statistics.median(cpu / relay for cpu, relay in pairs)
    return merged, merged["cpu"] / ratio


def _session_row(concurrency: int, name: str, row: dict[str, float], relay: float | None) -> str:
    label = "relay `/v1/chat/completions`" if name == "gateway" else name
    if row.get("median_of"):
        label = f"**median of {int(row['median_of'])}**: {label}"
    if not row.get("n"):
        return f"| {concurrency} | {label} | 0 | {int(row.get('failed', 0))} | | | | | |"
    cpu, most, p99_most = row.get("cpu"), *SESSION_TARGETS.get(name, (None, None))
    ratio = cpu / relay if cpu and relay else None
    added = (row["ttft50"] - row.get("direct_ttft50", math.nan),
             row["ttft99"] - row.get("direct_ttft99", math.nan))  # fmt: skip
    cpu_goal = p99_goal = ""
    if most is not None and ratio is not None:
        cpu_goal = f"<= {most:g}x: {'met' if ratio <= most else 'not met'}"
    if p99_most is not None and concurrency == P99_LEVEL:
        p99_goal = f"<= {p99_most:g} ms: {'met' if added[1] <= p99_most else 'not met'}"
    return (
        f"| {concurrency} | {label} | {int(row['n'])} | {int(row['failed'])} "
        f"| {'-' if cpu is None else f'{cpu:.2f}'} | {'-' if ratio is None else f'{ratio:.2f}'}"
        f" | {cpu_goal} | {added[0]:+.1f} / {added[1]:+.1f} | {p99_goal} |"
    )


def redis_burst(svc: Services, prompt: str, count: int) -> None:
    """`count` session answers started at once on Redis, each in a new session."""
    settle(svc)
    port = svc.ports["sessions redis"]
    started = [SessionAsker(port, prompt) for _ in range(count)]

    async def run() -> dict[str, float]:
        gate = asyncio.Semaphore(64)

        async def open_one(asker: SessionAsker) -> None:
            async with gate:
                await asker.open()

        await asyncio.gather(*(open_one(a) for a in started))
        return await _burst(started.pop, count, 1)

    row = measured_cpu(svc, "sessions redis", run())
    print(f"\n{count} session answers started at once on Redis (a new session each), load"
          f" average {_load()}: {int(row['completed'])} completed, {int(row['failed'])} failed;"
          f" TTFT p50 {row['ttft50']:.0f} ms, p99 {row['ttft99']:.0f} ms; total p99"
          f" {row['total99']:.0f} ms")  # fmt: skip


# /proc counts CPU in 10 ms ticks, and an idle server still does some work: over fewer
# streams than this the per-stream figure would be mostly noise
CPU_MIN_STREAMS = 100


def measured_cpu(
    svc: Services, name: str, run: Coroutine[Any, Any, dict[str, float]]
) -> dict[str, float]:
    """A row, with the CPU its proxy process used per completed stream (ms) added (a
    target's proxy is the process of the same name, with redis-server for the Redis
    sessions; direct has none)."""
    pids = svc.cpu_pids(name)
    before = sum(map(cpu_seconds, pids))
    row = asyncio.run(run)
    completed = row.get("completed", 0)
    if pids and completed >= CPU_MIN_STREAMS:
        row["cpu"] = (sum(map(cpu_seconds, pids)) - before) * 1000 / completed
    return row


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(svc: Services, busy: float = 0.05, timeout: float = 90.0) -> None:
    """Wait until the servers are idle (under `busy` of a core together): a target left
    working off a row it could not keep up with (LiteLLM still streaming to clients that
    have gone) would otherwise slow the next target's row."""
    if not Path("/proc/self/stat").exists():
        return
    pids = [proc.pid for proc in svc.procs.values()]
    deadline = time.monotonic() + timeout
    before = sum(map(cpu_seconds, pids))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(map(cpu_seconds, pids))
        if now - before < busy * 0.5:
            return
        before = now
    print(f"(servers still busy after {timeout:g} s; measuring anyway)", file=sys.stderr)


def core_speed() -> float:
    """Millions of pure-Python loop steps per second on one core, best of three: VMs
    differ, and figures from two machines compare only next to this."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for step in range(2_000_000):
            total += step
        best = min(best, time.perf_counter() - began)
    return 2.0 / best


def _load() -> str:
    """The machine's 1-minute load average (other work on the box skews every figure)."""
    return f"{os.getloadavg()[0]:.1f}"


def _header() -> None:
    print("| streams | target | TTFT p50 | TTFT p99 | total p50 | total p99 | added TTFT p50 / p99"
          " | added total p50 / p99 | measured | failed | proxy CPU ms/stream |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")


LIFETIME = 0.61  # one direct stream: 100 ms + 50 x 10 ms
BUDGET = 45.0  # seconds one closed-loop run may take before it is cut off


@dataclass
class ClosedLoop:
    """N workers, each starting a new stream when its previous one ends.

    Workers start spread over one lifetime (no thundering herd); the window opens once
    every worker has finished a stream and at least two lifetimes have passed; streams
    started inside the window are measured. Nothing runs past BUDGET seconds: streams
    measured but unfinished by then are reported as cut off."""

    make: Callable[[], Asker]  # each worker's asker
    concurrency: int
    window: float
    samples: list[Sample] = field(default_factory=list)
    failed: int = 0
    cut: int = 0
    warmed: int = 0
    completed: int = 0  # every stream finished, measured or not

    async def run(self) -> dict[str, float]:
        self.all_warm, self.opened = asyncio.Event(), asyncio.Event()
        self.start = self.end = float("inf")
        workers = [asyncio.create_task(self.worker(i)) for i in range(self.concurrency)]
        opener = asyncio.create_task(self.open_window())
        _, pending = await asyncio.wait(workers, timeout=BUDGET)
        for task in (*pending, opener):
            task.cancel()
        await asyncio.gather(*pending, opener, return_exceptions=True)
        if not self.opened.is_set():
            return {"warm": False, "completed": self.completed}
        return {**summary(self.samples, self.failed), "cut": self.cut,
                "completed": self.completed}  # fmt: skip

    async def open_window(self) -> None:
        await asyncio.sleep(2 * LIFETIME)
        await self.all_warm.wait()
        self.start = time.perf_counter()
        self.end = self.start + self.window
        self.opened.set()

    async def worker(self, index: int) -> None:
        await asyncio.sleep(LIFETIME * index / self.concurrency)
        ask = self.make()
        first = True
        while (now := time.perf_counter()) < self.end:
            measured = now >= self.start
            try:
                sample = await ask()
            except asyncio.CancelledError:  # cut off by the budget
                self.cut += measured
                raise
            except Exception:
                self.failed += measured
            else:
                self.completed += 1
                if measured:
                    self.samples.append(sample)
            if first:
                first = False
                self.warmed += 1
                if self.warmed == self.concurrency:
                    self.all_warm.set()


def summary(samples: list[Sample], failed: int) -> dict[str, float]:
    ttft = [s.ttft for s in samples] or [float("nan")]
    total = [s.total for s in samples] or [float("nan")]
    return {"ttft50": pct(ttft, 0.5), "ttft99": pct(ttft, 0.99), "total50": pct(total, 0.5),
            "total99": pct(total, 0.99), "failed": failed, "n": len(samples)}  # fmt: skip


async def _burst(make: Callable[[], Asker], concurrency: int, rounds: int) -> dict[str, float]:
    samples: list[Sample] = []
    failed = 0
    for _ in range(rounds):
        ask = [make() for _ in range(concurrency)]
        results = await asyncio.gather(*(a() for a in ask), return_exceptions=True)
        samples += [r for r in results if isinstance(r, Sample)]
        failed += sum(1 for r in results if not isinstance(r, Sample))
    return {**summary(samples, failed), "completed": len(samples)}


def _row(concurrency: int, name: str, row: dict[str, float], base: dict[str, float]) -> str:
    if not row.get("warm", True):
        return (f"| {concurrency} | {name} | no steady state within {BUDGET:g} s"
                " (cannot keep N streams moving) | | | | | | - | - | - |")  # fmt: skip
    cut = f" ({int(row['cut'])} cut off at {BUDGET:g} s)" if row.get("cut") else ""
    cpu = f"{row['cpu']:.2f}" if "cpu" in row else "-"
    if not row["n"]:
        failed = f"{int(row['failed'])}{cut}"
        return f"| {concurrency} | {name} | no stream finished | | | | | | 0 | {failed} | {cpu} |"
    if name == "direct":
        base.update(row)
        added = "| - | -"
    elif not base:
        added = "| ? | ?"
    else:
        added = (
            f"| {row['ttft50'] - base['ttft50']:+.1f} / {row['ttft99'] - base['ttft99']:+.1f} "
            f"| {row['total50'] - base['total50']:+.1f} / {row['total99'] - base['total99']:+.1f}"
        )
    return (
        f"| {concurrency} | {name} | {row['ttft50']:.1f} | {row['ttft99']:.1f} "
        f"| {row['total50']:.1f} | {row['total99']:.1f} {added} | {int(row['n'])} "
        f"| {int(row['failed'])}{cut} | {cpu} |"
    )


def saturation(svc: Services, seconds: float) -> None:
    prompt = find_prompt(svc.ports["direct"])
    print(f"\n(b) saturation: zero-latency simulator, 64 clients, closed loop, {seconds:g} s,"
          f" load average {_load()}")  # fmt: skip
    print("| target | streams/s | chunks/s | vs LiteLLM |")
    print("|---|---|---|---|")
    rates: dict[str, tuple[float, float]] = {}
    for name, port in svc.ports.items():
        request = request_bytes(port, prompt)
        asyncio.run(level(port, request, 16, 1))
        settle(svc)
        started = time.perf_counter()
        streams, chunks = asyncio.run(saturate(port, request, 64, seconds))
        elapsed = time.perf_counter() - started
        rates[name] = (streams / elapsed, chunks / elapsed)
    litellm = rates.get("litellm", (0.0, 0.0))[0]
    for name, (stream_rate, chunk_rate) in rates.items():
        ratio = f"{stream_rate / litellm:.1f}x" if litellm else "-"
        print(f"| {name} | {stream_rate:.1f} | {chunk_rate:.0f} | {ratio} |")


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrencies start at 1")
    return levels


def _stores(text: str) -> tuple[str, ...]:
    stores = tuple(part.strip() for part in text.split(","))
    if not stores or set(stores) - set(STORES):
        raise argparse.ArgumentTypeError(f"stores are among {', '.join(STORES)}: {text}")
    return stores


def _names(text: str) -> frozenset[str]:
    names = frozenset(part.strip() for part in text.split(","))
    unknown = names - {"direct", "tcp-floor", "asgi-floor", "gateway", "litellm"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown targets: {', '.join(sorted(unknown))}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    parser.add_argument("--seconds", type=float, default=8.0, help="saturation run length")
    parser.add_argument("--window", type=float, default=2.0, help="steady-state window (s)")
    parser.add_argument("--only", choices=("a", "b"), help="run one regime")
    parser.add_argument(
        "--levels", type=_levels, default=LEVELS, help="regime (a)'s concurrencies, e.g. 256"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="steady-state rows per level (its spread)"
    )
    parser.add_argument(
        "--sessions",
        nargs="?",
        const=",".join(STORES),
        type=_stores,
        default=(),
        help="(a) also: session answers on these stores (default: memory,sqlite,redis)",
    )
    parser.add_argument(
        "--targets", type=_names, help="only these chat targets, e.g. direct,gateway"
    )
    parser.add_argument("--no-burst", action="store_true", help="(a): no burst table")
    parser.add_argument(
        "--redis-burst", type=int, default=0, help="with --sessions: N answers at once on Redis"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    litellm = None if args.no_litellm else ensure_litellm()
    with contextlib.suppress(ImportError):  # the load generator on uvloop: cheaper per read
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d')},"
          f" core speed: {core_speed():.0f} M loop steps/s")  # fmt: skip
    if args.only != "b":
        with services(100, 10, litellm, args.targets, args.sessions) as svc:
            realistic(svc, args)
    if args.only != "a":
        with services(0, 0, litellm, args.targets) as svc:
            saturation(svc, 2.0 if args.quick else args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
