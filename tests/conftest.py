"""Fixtures shared by the whole suite: real servers on free loopback ports.

- `sim`: one simulator per test worker (`dskit.sim.SimServer`), over real HTTP.
- `sim_factory`: a simulator with its own configuration, stopped after the test.
- `redis_url`: a real Redis. `REDIS_URL` when set; otherwise a `redis-server` started on a
  free port in a temp dir (AOF on, so tests may restart it). Missing Redis skips the test,
  except under CI=true where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


DSKIT = str(Path(sys.executable).parent / "dskit")
LISTENING = re.compile(r"running on http://127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def logged_port(log: Path) -> int:
    """The port a `dskit serve --port 0` says it listens on in `log`; 0 until it does."""
    found = LISTENING.search(log.read_text(errors="replace")) if log.exists() else None
    return int(found.group(1)) if found else 0


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _no_real_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see a developer's real key or base URL."""
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    monkeypatch.delenv("DEEPSEEK_BASE_URL", raising=False)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variables: `AsyncDeepSeek` then streams through dskit's own H1 pool."""
    from dskit.client._h1 import PROXY_VARIABLES

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def sim() -> Iterator[Any]:
    from dskit.sim import SimServer

    with SimServer() as server:
        yield server


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., Any]]:
    from dskit.sim import SimConfig, SimServer

    started: list[Any] = []

    def make(**config: Any) -> Any:
        server = SimServer(SimConfig(**config))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


class QuietHandler(BaseHTTPRequestHandler):
    """A test server's request handler: HTTP/1.1, no log lines, `reply` sends a body."""

    protocol_version = "HTTP/1.1"

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class LocalHTTPServer:
    """A threading HTTP server on a free loopback port, serving from a daemon thread
    (for a test's own little upstream or webhook receiver)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class GatewayProcess:
    """One `dskit serve ARGS` process (a test can SIGKILL it and `start()` it again), its
    output in `logs/<name>-<n>.log`. It binds port 0 itself and the port is read from its
    log: a port picked here and bound later by the child could be taken meanwhile by
    another worker's server, whose answers the test would then read as ours."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **env}
        self.logs = logs
        self.port = 0
        self.launches = 0
        self.log_path = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        self.port, self.launches = 0, self.launches + 1
        self.log_path = self.logs / f"{self.name}-{self.launches}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115
        command = [DSKIT, "serve", "--port", "0", *self.args]
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        log.close()

    def wait_ready(self) -> None:
        wait_until(self._ready, timeout=30, interval=0.05)

    def start(self) -> GatewayProcess:
        self.launch()
        self.wait_ready()
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"gateway {self.name} exited: see {self.log_path}")
        self.port = self.port or logged_port(self.log_path)
        if not self.port:
            return False
        try:
            return httpx2.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


class RedisServer:
    """A redis-server process owned by the test run, restartable with its data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=15)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _no_redis(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"Redis is required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """The suite's own redis-server, or None when REDIS_URL points at an external one."""
    if os.environ.get("REDIS_URL"):
        yield None
        return
    if shutil.which("redis-server") is None:
        _no_redis("redis-server is not installed and REDIS_URL is not set")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer | None) -> str:
    """A Redis URL for one test; each test gets its own key prefix via `redis_prefix`."""
    url = os.environ.get("REDIS_URL") or (redis_server.url if redis_server else "")
    if not url:
        _no_redis("no Redis available")
    return url


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key namespace unique to this test, so tests can share one Redis in parallel."""
    return f"t{os.getpid()}-{abs(hash(request.node.nodeid)) % 10**8}"
