"""Async callbacks: signed with HMAC-SHA256, retried with backoff, allow-listed hosts only."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson
import pytest

from dskit.gateway import SIGNATURE_HEADER, TIMESTAMP_HEADER, CallbackSettings, verify
from tests.conftest import LocalHTTPServer, wait_until

SECRET = "callback-secret-for-tests"


class Receiver:
    """A local HTTP server that records callbacks and fails the first `fail_first` of them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                ok = receiver.attempts > fail_first
                if ok:
                    receiver.received.append((dict(self.headers), body))
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LocalHTTPServer(Handler)
        self.url = f"http://localhost:{self.server.port}/hook"

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def receiver() -> Any:
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _settings() -> CallbackSettings:
    return CallbackSettings(allow_hosts=("localhost",), secret=SECRET, base_delay=0.05)


def test_callback_is_signed_and_carries_the_answer(gateway_factory: Any, receiver: Any) -> None:
    hook = receiver(fail_first=2)
    gateway = gateway_factory(callbacks=_settings())
    with gateway.client() as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        handle = http.post(
            f"/v1/sessions/{sid}/messages", json={"content": "hi", "callback_url": hook.url}
        )
        assert handle.status_code == 202
        wait_until(lambda: hook.received, timeout=20)
        stored = http.get(f"/v1/sessions/{sid}").json()["messages"][-1]
    headers, body = hook.received[0]
    assert hook.attempts == 3
    assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify("other-secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 60
    result = orjson.loads(body)
    assert result["answer_id"] == handle.json()["answer_id"] and result["session_id"] == sid
    assert result["status"] == "completed"
    assert result["message"]["content"] == stored["content"]


def test_callback_hosts_must_be_allowed(gateway_factory: Any) -> None:
    gateway = gateway_factory(callbacks=_settings())
    with gateway.client() as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        for url in ("http://127.0.0.1:9/x", "http://evil.example/x", "http://localhost.evil/x"):
            response = http.post(
                f"/v1/sessions/{sid}/messages", json={"content": "hi", "callback_url": url}
            )
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "callback_host_not_allowed"
        assert http.get(f"/v1/sessions/{sid}").json()["message_count"] == 0


def test_callbacks_need_a_secret(gateway: Any) -> None:
    with gateway.client() as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        response = http.post(
            f"/v1/sessions/{sid}/messages",
            json={"content": "hi", "callback_url": "http://localhost/x"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "callbacks_disabled"
