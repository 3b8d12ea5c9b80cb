"""Huge request heads against a real `dskit serve`: what one costs, and what four cost the
others (the latency of `/healthz` polled meanwhile).

    PYTHONPATH=src python bench/head_limits.py [--mb 100] [--parallel 4]

Each attempt sends `GET /healthz` with one header whose value is `--mb` megabytes, in
1 MiB writes, until the server answers or closes (or 60 s pass). Printed: how much the
server took before it stopped the attempt, how long that took, what it answered, the
server's peak RSS (VmHWM), and the /healthz latency while four clients attempt
(each again and again for at least 3 s).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2

CHUNK = b"a" * (1 << 20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HOME": str(home)}
    env.pop("DEEPSEEK_API_KEY", None)
    command = [
        sys.executable, "-c", "from dskit.cli import main; main()", "serve", "--port", str(port),
        "--store", str(home / "s.sqlite3"), "--keys-db", str(home / "k.sqlite3"),
        "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx2.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def attempt(port: int, megabytes: int) -> tuple[int, float, str]:
    """(bytes sent before the server stopped us, seconds, first line of its answer)."""
    started, sent = time.monotonic(), 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(60)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(megabytes):
                sock.sendall(CHUNK)
                sent += len(CHUNK)
                if time.monotonic() - started > 60:
                    break
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        try:
            answer = sock.recv(200).split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
        except OSError as exc:
            answer = f"closed ({type(exc).__name__})"
    return sent, time.monotonic() - started, answer


def attack(port: int, megabytes: int, until: float, tries: list[str]) -> None:
    """Attempts one after another, for at least until `until`."""
    tries.append(attempt(port, megabytes)[2])
    while time.monotonic() < until:
        tries.append(attempt(port, megabytes)[2])


def poll_health(port: int, stop: threading.Event, latencies: list[float]) -> None:
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        while not stop.is_set():
            began = time.monotonic()
            try:
                client.get("/healthz")
                latencies.append(time.monotonic() - began)
            except httpx2.HTTPError:
                latencies.append(float("inf"))
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        proc = start_server(port, Path(home))
        try:
            base = peak_rss_mb(proc.pid)
            sent, took, answer = attempt(port, args.mb)
            print(
                f"one {args.mb} MB head: server took {sent / 1e6:.1f} MB in {took:.2f} s, "
                f"answered {answer!r}; peak RSS {base:.0f} -> {peak_rss_mb(proc.pid):.0f} MB"
            )
            stop, latencies = threading.Event(), []
            poller = threading.Thread(target=poll_health, args=(port, stop, latencies))
            poller.start()
            time.sleep(0.5)
            idle = len(latencies)
            began, tries = time.monotonic(), []
            threads = [threading.Thread(target=attack, args=(port, args.mb, began + 3, tries))
                       for _ in range(args.parallel)]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            during = time.monotonic() - began
            stop.set()
            poller.join()
            busy = sorted(latencies[idle:]) or [0.0]
            print(
                f"{args.parallel} in parallel, {len(tries)} attempts in {during:.2f} s; /healthz "
                f"idle p50={statistics.median(latencies[:idle]) * 1000:.1f} ms, meanwhile "
                f"n={len(busy)} p50={statistics.median(busy) * 1000:.1f} ms "
                f"max={busy[-1] * 1000:.1f} ms; peak RSS {peak_rss_mb(proc.pid):.0f} MB"
            )
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
