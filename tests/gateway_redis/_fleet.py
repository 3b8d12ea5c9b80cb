"""Gateway processes (`dskit serve` subprocesses) sharing one Redis, and an SSE reader.

Each instance is a real process on a free port so a test can SIGKILL it mid-answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
import orjson

from tests.conftest import free_port, wait_until

DSKIT = str(Path(sys.executable).parent / "dskit")


class GatewayProcess:
    """One `dskit serve --redis ...` process; `start()` again after `kill()`."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **env}
        self.logs = logs
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        self.port = free_port()
        log = open(self.logs / f"{self.name}-{self.port}.log", "wb")  # noqa: SIM115
        command = [DSKIT, "serve", "--port", str(self.port), *self.args]
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
            raise RuntimeError(f"gateway {self.name} exited: see {self.logs}")
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


def start_fleet(
    count: int, redis_url: str, namespace: str, upstream: str, tmp: Path, *extra: str,
    env: Mapping[str, str] | None = None,
) -> list[GatewayProcess]:  # fmt: skip
    """`count` instances on one Redis, launched in parallel, all ready."""
    args = ["--redis", redis_url, "--store", redis_url, "--upstream", upstream,
            "--keys-db", str(tmp / "keys.sqlite3"), *extra]  # fmt: skip
    base_env = {
        "DSKIT_GATEWAY_REDIS_NAMESPACE": namespace, "DSKIT_GATEWAY_LEASE_SECONDS": "1",
        "DSKIT_GATEWAY_TAKEOVER_INTERVAL": "0.2", "DSKIT_GATEWAY_HEARTBEAT_SECONDS": "0.5",
        "DSKIT_HOME": str(tmp),
        # the simulator runs apart, and the tests pace it and inject its faults
        "DSKIT_GATEWAY_FORWARD_SIM_HEADERS": "true", **(env or {}),
    }  # fmt: skip
    fleet = [GatewayProcess(f"gw{i}", args, base_env, tmp) for i in range(count)]
    for gateway in fleet:
        gateway.launch()
    for gateway in fleet:
        gateway.wait_ready()
    return fleet


def sse_events(response: httpx2.Response) -> Iterator[dict[str, Any]]:
    """Events of a streamed SSE response as they arrive: id, event and parsed data."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield {"id": fields.get("id"), "event": fields.get("event", "message"),
                       "data": orjson.loads(fields["data"])}  # fmt: skip
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
