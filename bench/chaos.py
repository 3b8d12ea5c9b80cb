"""Chaos: concurrent streams through three gateway instances on one Redis, while the
upstream fails at random (the simulator's fault rate) and instances are SIGKILLed.

    .venv/bin/python bench/chaos.py                 # 180 s, 12 concurrent streams
    .venv/bin/python bench/chaos.py --seconds 30    # a shorter run

Every stream is read like a browser would: on a broken connection it reconnects to
another instance with Last-Event-ID. At the end it prints streams completed, text
mismatches (must be 0: the text differs from the same request's unbroken answer), lost
messages (must be 0: an answer the client saw done but the session does not hold),
and p50/p99 time to first token.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson

from dskit import DeepSeek
from dskit.client._sse import ServerSentEvent, SSEDecoder
from dskit.sim import SimConfig, SimServer

DSKIT = str(Path(sys.executable).parent / "dskit")
QUESTIONS = [f"Tell me about river number {i} and its mountains" for i in range(40)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("not ready in time")
        time.sleep(0.05)


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(answers, 15)
    return process, url


class Instance:
    """One `dskit serve` process; killed and restarted by the chaos thread."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.alive = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        with open(self.logs / f"{self.name}.log", "ab") as log:
            command = [DSKIT, "serve", "--port", str(self.port), *self.args]
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        wait_for(self._ready, 30)
        self.alive = True

    def _ready(self) -> bool:
        try:
            return httpx2.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def kill(self) -> None:
        self.alive = False
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        self.alive = False
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class Tally:
    completed: int = 0
    failed: int = 0
    mismatches: int = 0
    lost: int = 0
    reconnects: int = 0
    kills: int = 0
    ttft: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Expected:
    """The unbroken answer of each question, from a fault-free simulator."""

    def __init__(self, base_url: str) -> None:
        self.client = DeepSeek(api_key="sk-bench", base_url=base_url)
        self.texts: dict[str, str] = {}
        self.lock = threading.Lock()

    def of(self, question: str) -> str:
        with self.lock:
            if question not in self.texts:
                messages = [{"role": "user", "content": question}]
                self.texts[question] = self.client.chat(
                    messages, model="deepseek-flash", thinking=False
                ).content
            return self.texts[question]


def live(instances: list[Instance], rng: random.Random) -> Instance:
    while True:
        choices = [i for i in instances if i.alive]
        if choices:
            return rng.choice(choices)
        time.sleep(0.05)


def read_events(response: httpx2.Response, events: list[dict[str, Any]]) -> bool:
    """Append the SSE events of a response; True when the answer ended."""
    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        for item in decoder.feed(chunk):
            if isinstance(item, ServerSentEvent):
                data = orjson.loads(item.data)
                event = {"id": item.id, "event": item.event, "data": data}
                events.append({**event, "at": time.monotonic()})
                if item.event in ("done", "error"):
                    return True
    return False


def one_stream(
    instances: list[Instance], rng: random.Random, tally: Tally, expected: Expected
) -> None:
    question = rng.choice(QUESTIONS)
    with httpx2.Client(timeout=httpx2.Timeout(10.0, read=60.0)) as http:
        session = _with_retries(lambda: _create(http, live(instances, rng)))
        events: list[dict[str, Any]] = []
        began = time.monotonic()
        answer_id = None
        try:
            url = f"{live(instances, rng).url}/v1/sessions/{session}/messages"
            body = {"content": question, "stream": True}
            with http.stream("POST", url, json=body, headers={"X-Sim-Token-Ms": "4"}) as response:
                if response.status_code != 200:
                    raise httpx2.HTTPError(f"status {response.status_code}")
                answer_id = response.headers["X-Answer-Id"]
                ended = read_events(response, events)
        except httpx2.HTTPError:
            ended = False
        if answer_id is None:
            return  # never started: not a stream (the POST was refused or lost)
        while not ended:
            with tally.lock:  # workers count concurrently: += alone may lose counts
                tally.reconnects += 1
            ended = _resume(http, live(instances, rng), session, answer_id, events)
        _judge(http, instances, rng, session, question, events, began, tally, expected)


def _with_retries(call: Any) -> Any:
    for attempt in range(50):
        try:
            return call()
        except (httpx2.HTTPError, KeyError):
            time.sleep(0.1 * (attempt + 1))
    raise RuntimeError("gave up")


def _create(http: httpx2.Client, instance: Instance) -> str:
    response = http.post(
        instance.url + "/v1/sessions",
        json={"model": "deepseek-flash", "parameters": {"thinking": False}},
    )
    return str(response.json()["id"])


def _resume(http: httpx2.Client, instance: Instance, session: str, answer_id: str,
            events: list[dict[str, Any]]) -> bool:  # fmt: skip
    url = f"{instance.url}/v1/sessions/{session}/answers/{answer_id}/stream"
    headers = {"Last-Event-ID": str(events[-1]["id"])} if events else {}
    try:
        with http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                time.sleep(0.2)
                return False
            return read_events(response, events)
    except httpx2.HTTPError:
        time.sleep(0.1)
        return False


def _judge(http: httpx2.Client, instances: list[Instance], rng: random.Random, session: str,
           question: str, events: list[dict[str, Any]], began: float, tally: Tally,
           expected: Expected) -> None:  # fmt: skip
    text = "".join(e["data"]["text"] for e in events if e["event"] == "content")
    seqs = [int(str(e["id"]).rpartition(":")[2]) for e in events]
    first = next((e for e in events if e["event"] == "content"), None)
    wanted = expected.of(question)
    with tally.lock:
        if events[-1]["event"] == "error":
            tally.failed += 1
            return
        tally.completed += 1
        if text != wanted or seqs != list(range(1, len(seqs) + 1)):
            tally.mismatches += 1
        if first is not None:
            tally.ttft.append(first["at"] - began)
    stored = _with_retries(
        lambda: http.get(f"{live(instances, rng).url}/v1/sessions/{session}").json()
    )
    messages = stored["messages"]
    if not messages or messages[-1]["content"] != text or messages[-2]["content"] != question:
        with tally.lock:
            tally.lost += 1


def worker(
    instances: list[Instance], deadline: float, seed: int, tally: Tally, expected: Expected
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        one_stream(instances, rng, tally, expected)


def chaos(
    instances: list[Instance], deadline: float, every: float, seed: int, tally: Tally
) -> None:
    rng = random.Random(seed)
    while time.monotonic() + every < deadline:
        time.sleep(every * rng.uniform(0.5, 1.5))
        victim = rng.choice([i for i in instances if i.alive] or instances)
        victim.kill()
        tally.kills += 1
        victim.start()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(tally: Tally, seconds: float, args: argparse.Namespace) -> None:
    rows = [
        ("duration", f"{seconds:.0f} s"), ("concurrent streams", str(args.streams)),
        ("upstream fault rate", f"{args.fault_rate:.0%}"), ("instance kills", str(tally.kills)),
        ("streams completed", str(tally.completed)),
        ("streams ended by an upstream error", str(tally.failed)),
        ("client reconnects (Last-Event-ID)", str(tally.reconnects)),
        ("text mismatches", str(tally.mismatches)), ("lost messages", str(tally.lost)),
        ("TTFT p50", f"{percentile(tally.ttft, 0.5) * 1000:.0f} ms"),
        ("TTFT p99", f"{percentile(tally.ttft, 0.99) * 1000:.0f} ms"),
        ("TTFT mean", f"{statistics.fmean(tally.ttft) * 1000:.0f} ms" if tally.ttft else "-"),
    ]  # fmt: skip
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--streams", type=int, default=12, help="concurrent streams")
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--kill-every", type=float, default=8.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dskit-chaos-") as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    redis, url = start_redis(tmp)
    faulty = SimServer(SimConfig(fault_rate=args.fault_rate, seed=args.seed))
    clean = SimServer(SimConfig(seed=args.seed))  # the text depends on the seed too
    faulty.start()
    clean.start()
    env = {**os.environ, "DSKIT_HOME": str(tmp), "DSKIT_GATEWAY_LEASE_SECONDS": "2",
           "DSKIT_GATEWAY_TAKEOVER_INTERVAL": "0.25",
           "DSKIT_GATEWAY_HEARTBEAT_SECONDS": "1",
           "DSKIT_GATEWAY_FORWARD_SIM_HEADERS": "true"}  # the simulator runs apart  # fmt: skip
    env.pop("DEEPSEEK_API_KEY", None)
    gw_args = ["--redis", url, "--store", url, "--upstream", faulty.base_url,
               "--keys-db", str(tmp / "keys.sqlite3"), "--log-format", "json"]  # fmt: skip
    instances = [Instance(f"gw{i}", gw_args, env, tmp) for i in range(3)]
    tally, expected = Tally(), Expected(clean.base_url)
    try:
        for instance in instances:
            instance.start()
        began = time.monotonic()
        deadline = began + args.seconds
        threads = [
            threading.Thread(
                target=worker, args=(instances, deadline, args.seed + n, tally, expected)
            )
            for n in range(args.streams)
        ]
        threads.append(
            threading.Thread(
                target=chaos, args=(instances, deadline, args.kill_every, args.seed, tally)
            )
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report(tally, time.monotonic() - began, args)
    finally:
        for instance in instances:
            instance.stop()
        faulty.stop()
        clean.stop()
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main()
