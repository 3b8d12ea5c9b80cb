"""Gateway test helpers: the gateway on uvicorn in a thread, on a free loopback port.

Every gateway talks real HTTP to the per-worker simulator (`sim`), keeps its sessions and
keys in SQLite files under tmp_path, and is stopped after its test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import uvicorn

from dskit.gateway import GatewaySettings, create_app
from dskit.gateway.edge._server import server_options
from tests.conftest import LocalHTTPServer, QuietHandler


class GatewayServer:
    """A running gateway: `url`, `app`, `gw` (its state), and `client()` for HTTP calls."""

    def __init__(self, settings: GatewaySettings, **parts: Any) -> None:
        self.settings = settings
        self.app = create_app(settings, **parts)
        self.gw = self.app.state.gateway
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="on",
            timeout_graceful_shutdown=1, **server_options(settings),
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.server.run(sockets=[self._sock])

    def start(self) -> GatewayServer:
        self._thread.start()
        from tests.conftest import wait_until

        wait_until(lambda: self.server.started or not self._thread.is_alive(), timeout=20)
        assert self.server.started, "the gateway did not start"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()

    def client(self, key: str | None = None, **kwargs: Any) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def gateway_factory(sim: Any, tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    started: list[GatewayServer] = []

    def make(**overrides: Any) -> GatewayServer:
        values: dict[str, Any] = {
            "upstream": sim.base_url, "api_key": "sk-test-upstream-0123456789",
            "store": str(tmp_path / "sessions.sqlite3"),
            "keys_path": str(tmp_path / "gateway.sqlite3"), "heartbeat_seconds": 0.5,
            "forward_sim_headers": True,  # the sim runs apart, and tests inject its faults
        }  # fmt: skip
        values.update(overrides)
        server = GatewayServer(GatewaySettings(**values)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer]) -> GatewayServer:
    return gateway_factory()


class RecordingUpstream:
    """A pass-through to the simulator that keeps every chat request body it relayed;
    `models`, when set, is what it answers to `GET /models` instead."""

    def __init__(self, target: str) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.models: list[dict[str, Any]] | None = None
        forward = httpx2.Client(base_url=target, timeout=30)
        recorder = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/chat/completions"):
                    recorder.bodies.append(orjson.loads(body))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                reply = forward.post(self.path, content=body, headers=headers)
                self.reply(reply.status_code, reply.content, reply.headers.get("content-type", ""))

            def do_GET(self) -> None:
                if self.path.endswith("/models") and recorder.models is not None:
                    body = orjson.dumps({"object": "list", "data": recorder.models})
                    self.reply(200, body)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                reply = forward.get(self.path, headers=headers)
                self.reply(reply.status_code, reply.content, reply.headers.get("content-type", ""))

        self._forward = forward
        self._server = LocalHTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}"

    def close(self) -> None:
        self._server.close()
        self._forward.close()


@pytest.fixture
def recording_upstream(sim: Any) -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream(sim.base_url)
    yield upstream
    upstream.close()


def parse_sse(text: str) -> list[dict[str, str]]:
    """Events of an LF-only SSE body: dicts of their fields (comments kept as `comment`)."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            key = name or "comment"
            event[key] = event.get(key, "") + value.removeprefix(" ")
        events.append(event)
    return events
