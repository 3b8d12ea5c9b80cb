"""The edge: bounded request heads, content types, Host names, origins, page headers,
bounded callback answers, the upstream key redacted, sim headers and revoked keys."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from tests.conftest import LocalHTTPServer, QuietHandler, logged_port, wait_until
from tests.gateway.conftest import GatewayServer, parse_sse

CHAT = {
    "model": "deepseek-flash",
    "thinking": {"type": "disabled"},
    "messages": [{"role": "user", "content": "hi"}],
}


def _raw(server: GatewayServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# ---- 1. request heads: 64 KiB, and complete within the head timeout ------------------


def test_a_head_over_64_kib_is_431_before_any_route(gateway: GatewayServer) -> None:
    with _raw(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MiB: the server stops reading long before
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"request_header_fields_too_large" in answer


def test_a_head_under_the_limit_is_served(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        response = http.get("/healthz", headers={"X-Big": "a" * 40_000})
    assert response.status_code == 200


def test_a_head_not_complete_in_time_is_closed(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    server = gateway_factory(head_timeout_seconds=1.0)
    with _raw(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed_after = None
        for _ in range(40):  # drip a header for up to 8 s
            try:
                sock.sendall(b"X")
            except OSError:
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(100) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
    assert closed_after is not None and closed_after < 3.0, closed_after


def test_the_head_timeout_applies_to_each_request_of_a_connection(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    server = gateway_factory(head_timeout_seconds=1.0)
    with _raw(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the second head never ends
        started = time.monotonic()
        sock.settimeout(5)
        assert sock.recv(100) == b""
    assert time.monotonic() - started < 3.0


# ---- 2. content types, Host names, origins, the page's headers ----------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/sessions", "/v1/login"])
def test_post_bodies_must_be_json(gateway: GatewayServer, path: str) -> None:
    body = orjson.dumps({**CHAT, "key": "x"})
    with gateway.client() as http:
        response = http.post(path, content=body, headers={"Content-Type": "text/plain"})
        untyped = http.post(path, content=body, headers={"Content-Type": ""})
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert untyped.status_code == 415


def test_json_with_a_charset_and_bodyless_posts_pass(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        typed = {"Content-Type": "application/json; charset=utf-8"}
        created = http.post("/v1/sessions", content=b'{"model": "deepseek-flash"}', headers=typed)
        cancel = http.post(f"/v1/sessions/{created.json()['id']}/cancel")
    assert created.status_code == 201, created.text
    assert cancel.status_code == 200, cancel.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.evil.example"])
def test_a_foreign_host_is_refused(gateway: GatewayServer, host: str) -> None:
    with gateway.client() as http:
        response = http.get("/v1/gateway", headers={"Host": host})
        chat = http.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
    assert response.status_code == 421
    assert response.json()["error"]["code"] == "host_not_allowed"
    assert chat.status_code == 421


@pytest.mark.parametrize("host", ["localhost:1", "[::1]:8000", "127.0.0.2", "chat.example.com"])
def test_loopback_and_allowed_hosts_are_served(
    gateway_factory: Callable[..., GatewayServer], host: str
) -> None:
    server = gateway_factory(allowed_hosts=("chat.example.com",))
    with server.client() as http:
        assert http.get("/v1/gateway", headers={"Host": host}).status_code == 200


def _login(http: httpx2.Client, gateway: GatewayServer) -> str:
    from dskit.gateway import KeyStore

    with KeyStore(gateway.settings.keys_path) as keys:
        key, _ = keys.create("alice")
    wait_until(lambda: gateway.gw.auth_required)  # a key created while it runs switches auth on
    assert http.post("/v1/login", json={"key": key}).status_code == 204
    return key


def test_cookie_requests_need_the_gateways_own_origin(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        _login(http, gateway)
        own = {"Origin": gateway.url}
        assert http.get("/v1/sessions").status_code == 200  # a GET may omit Origin
        assert http.post("/v1/sessions", json={}, headers=own).status_code == 201
        evil = http.post("/v1/sessions", json={}, headers={"Origin": "http://evil.example"})
        bare = http.post("/v1/sessions", json={})
        evil_get = http.get("/v1/sessions", headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "cross_origin"
    assert bare.status_code == 403
    assert evil_get.status_code == 403


def test_bearer_requests_need_no_origin(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        key = _login(http, gateway)
    with gateway.client(key) as http:
        response = http.post("/v1/sessions", json={}, headers={"Origin": "http://evil.example"})
    assert response.status_code == 201


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
def test_the_page_carries_security_headers(gateway: GatewayServer, path: str) -> None:
    with gateway.client() as http:
        response = http.get(path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_page_needs_no_inline_script_or_style() -> None:
    from dskit.gateway.edge._app import STATIC

    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


# ---- 4. the upstream key's own value is redacted wherever text leaves ----------------

SECRET = "live-abc123secretXYZ"  # no `sk-` prefix: only its own value can find it


class EchoingUpstream:
    """An upstream that lists one model and refuses every chat, quoting the key it got."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                data = [{"id": "deepseek-flash", "object": "model", "owned_by": "x"}]
                self.reply(200, orjson.dumps({"object": "list", "data": data}))

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers["Authorization"].removeprefix("Bearer ")
                error = {"message": f"key {key} is not valid here", "type": "invalid_request"}
                self.reply(400, orjson.dumps({"error": error}))

        self.server = LocalHTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
def echoing(gateway_factory: Callable[..., GatewayServer]) -> Iterator[GatewayServer]:
    upstream = EchoingUpstream()
    yield gateway_factory(upstream=upstream.url, api_key=SECRET)
    upstream.server.close()


@pytest.fixture
def gateway_log() -> Iterator[io.StringIO]:
    from dskit.gateway._logging import JsonFormatter, RequestIdFilter, TextFormatter

    out = io.StringIO()
    handlers = []
    for formatter in (TextFormatter(), JsonFormatter()):
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
        handlers.append(handler)
    dskit_logger = logging.getLogger("dskit")
    level = dskit_logger.level
    dskit_logger.setLevel(logging.DEBUG)
    for handler in handlers:
        dskit_logger.addHandler(handler)
    yield out
    for handler in handlers:
        dskit_logger.removeHandler(handler)
    dskit_logger.setLevel(level)


def test_the_upstream_key_is_redacted_from_bodies_events_and_logs(
    echoing: GatewayServer, gateway_log: io.StringIO
) -> None:
    with echoing.client() as http:
        plain = http.post("/v1/chat/completions", json=CHAT)
        streamed = http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        session = http.post("/v1/sessions", json={"model": "deepseek-flash"}).json()["id"]
        events = http.post(
            f"/v1/sessions/{session}/messages", json={"content": "hi", "stream": True}
        )
    assert plain.status_code == 400 and "is not valid here" in plain.text
    assert "***" in plain.json()["error"]["message"]
    assert streamed.status_code == 400 and "is not valid here" in streamed.text
    errors = [e for e in parse_sse(events.text) if e.get("event") == "error"]
    assert errors and "is not valid here" in errors[0]["data"]
    assert "is not valid here" in gateway_log.getvalue()
    for text in (plain.text, streamed.text, events.text, gateway_log.getvalue()):
        assert SECRET not in text


# ---- 5. tenancy: sim fault headers, revoked keys' streams ------------------------------

FAULT = {"X-Sim-Status": "400"}


def test_sim_headers_do_not_reach_an_external_upstream_by_default(
    gateway_factory: Callable[..., GatewayServer], recording_upstream: Any
) -> None:
    server = gateway_factory(upstream=recording_upstream.url, forward_sim_headers=False)
    with server.client() as http:
        response = http.post("/v1/chat/completions", json=CHAT, headers=FAULT)
    assert response.status_code == 200, response.text


def test_sim_headers_reach_the_built_in_simulator(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    server = gateway_factory(upstream=None, api_key=None, forward_sim_headers=False)
    assert server.gw.mode == "simulator"
    with server.client() as http:
        assert http.post("/v1/chat/completions", json=CHAT, headers=FAULT).status_code == 400


def _revoke_when(server: GatewayServer, key_id: str, opened: threading.Event) -> threading.Thread:
    """Revoke the key once the stream is open (its first bytes arrived), not after a guess."""
    from dskit.gateway import KeyStore

    def revoke() -> None:
        assert opened.wait(15), "the stream never opened"
        with KeyStore(server.settings.keys_path) as keys:
            assert keys.revoke(key_id)

    thread = threading.Thread(target=revoke)
    thread.start()
    return thread


def _keyed(gateway_factory: Callable[..., GatewayServer]) -> tuple[GatewayServer, str, str]:
    from dskit.gateway import KeyStore

    server = gateway_factory(key_check_seconds=0.3)
    with KeyStore(server.settings.keys_path) as keys:
        key, info = keys.create("mallory")
    wait_until(lambda: server.gw.auth_required)
    return server, key, info.key_id


def _stream_until_end(
    http: httpx2.Client, path: str, body: Any, headers: Any, opened: threading.Event
) -> tuple[str, float]:
    with http.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        started, text = time.monotonic(), ""
        for piece in response.iter_text():
            opened.set()
            text += piece
    return text, time.monotonic() - started


@pytest.mark.parametrize("kind", ["relay", "session"])
def test_revoking_a_key_ends_its_open_streams(
    gateway_factory: Callable[..., GatewayServer], kind: str
) -> None:
    server, key, key_id = _keyed(gateway_factory)
    slow = {"X-Sim-Queue-Ms": "30000", "X-Sim-Keepalive-Ms": "100"}
    with server.client(key) as http:
        if kind == "relay":
            path, body = "/v1/chat/completions", {**CHAT, "stream": True}
        else:
            session = http.post("/v1/sessions", json={"model": "deepseek-flash"}).json()["id"]
            path, body = f"/v1/sessions/{session}/messages", {"content": "hi", "stream": True}
        opened = threading.Event()
        revoker = _revoke_when(server, key_id, opened)
        text, took = _stream_until_end(http, path, body, slow, opened)
        revoker.join()
        assert http.get("/v1/sessions").status_code == 401
    assert took < 5.0, took
    last = [e for e in parse_sse(text) if "data" in e][-1]
    assert "key_revoked" in last["data"]
    if kind == "session":
        assert last.get("event") == "error"
    else:
        assert orjson.loads(last["data"])["error"]["code"] == "key_revoked"


# ---- 3. callback answers: at most 64 KiB read, one deadline per attempt ----------------


class DripReceiver:
    """A webhook receiver answering 200 with a huge body, dripped: `piece` bytes every
    `every` seconds for up to `seconds` (so no single read ever times out)."""

    def __init__(self, piece: int, every: float, seconds: float = 8.0) -> None:
        self.sent = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._args = (piece, every, seconds)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._sock.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            piece, every, seconds = self._args
            until = time.monotonic() + seconds
            try:
                while time.monotonic() < until:
                    conn.sendall(b"x" * piece)
                    self.sent += piece
                    time.sleep(every)
            except OSError:
                pass

    def close(self) -> None:
        self._sock.close()
        self._thread.join(10)


def _deliver(receiver: DripReceiver, timeout: float) -> tuple[bool, float, int]:
    """(delivered, seconds, peak bytes allocated) of one callback attempt."""
    import asyncio
    import tracemalloc

    from dskit.gateway import CallbackSettings
    from dskit.gateway.answers._callbacks import CallbackSender

    async def deliver() -> bool:
        sender = CallbackSender(CallbackSettings(secret="s" * 16, max_attempts=1, timeout=timeout))
        try:
            return await sender.deliver(f"http://127.0.0.1:{receiver.port}/hook", b"{}")
        finally:
            await sender.aclose()

    tracemalloc.start()
    started = time.monotonic()
    try:
        delivered = asyncio.run(deliver())
        return delivered, time.monotonic() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_callback_answer_is_read_only_64_kib() -> None:
    receiver = DripReceiver(piece=256 * 1024, every=0.01)
    try:
        delivered, took, peak = _deliver(receiver, timeout=5.0)
    finally:
        receiver.close()
    assert delivered  # a 200 is a 200; the rest of its body is not our problem
    assert took < 2.0, took
    assert peak < 4 * 1024 * 1024, peak


def test_a_dripped_callback_answer_ends_by_the_attempt_deadline() -> None:
    receiver = DripReceiver(piece=100, every=0.05)  # never 64 KiB, never a read timeout
    try:
        delivered, took, _ = _deliver(receiver, timeout=1.0)
    finally:
        receiver.close()
    assert not delivered
    assert 0.9 < took < 2.5, took


def test_dskit_serve_bounds_request_heads(tmp_path: Path) -> None:
    """The limits as `dskit serve` runs them (head timeout from the environment)."""
    env = {**os.environ, "DSKIT_HOME": str(tmp_path), "DSKIT_CONFIG": str(tmp_path / "c.toml"),
           "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    env["DSKIT_GATEWAY_HEAD_TIMEOUT_SECONDS"] = "1"
    for name in ("DEEPSEEK_API_KEY", "DEEPSEEK_BASE_URL", "DSKIT_GATEWAY_REDIS"):
        env.pop(name, None)
    command = [sys.executable, "-c", "from dskit.cli import main; main()", "serve",
               "--port", "0"]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_until(lambda: logged_port(log), timeout=30, interval=0.05)
        wait_until(lambda: _answers(port), timeout=30, interval=0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000)
            assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            assert sock.recv(100) == b""
            assert time.monotonic() - started < 3.0
    finally:
        proc.terminate()
        proc.wait(15)


def _answers(port: int) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


def test_an_idle_kept_alive_connection_outlives_a_clients_idle_expiry(
    gateway: GatewayServer,
) -> None:
    """A connection left idle for httpx's keep-alive expiry (5 s, uvicorn's default
    timeout too) still serves the next request: the server does not close it under a
    client that is about to reuse it (1,000 answers at once met that reset)."""
    import time

    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        idle_until = time.monotonic() + 5.5  # the idle time is what is under test
        while time.monotonic() < idle_until:
            time.sleep(idle_until - time.monotonic())
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
