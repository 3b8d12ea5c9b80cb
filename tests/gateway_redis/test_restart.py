"""Redis restarted under load: nothing acknowledged is lost, service comes back by itself."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import RedisServer, wait_until
from tests.gateway_redis._fleet import GatewayProcess, start_fleet

pytestmark = [pytest.mark.redis, pytest.mark.slow]


class Load:
    """Clients creating sessions and asking questions (blocking mode) in a loop."""

    def __init__(self, gateways: list[GatewayProcess]) -> None:
        self.gateways = gateways
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: list[tuple[str, str, str, str]] = []  # url, session, question, answer
        self.statuses: list[int] = []
        self.failures: list[str] = []

    def run(self, index: int) -> None:
        gateway = self.gateways[index % len(self.gateways)]
        with httpx2.Client(base_url=gateway.url, timeout=20) as http:
            while not self.stop.is_set():
                try:
                    self.one(http, gateway.url)
                except httpx2.HTTPError as exc:  # a hang or a dropped connection
                    with self.lock:
                        self.failures.append(repr(exc))

    def one(self, http: httpx2.Client, url: str) -> None:
        created = http.post(
            "/v1/sessions", json={"model": "deepseek-flash", "parameters": {"thinking": False}}
        )
        self.note(created.status_code)
        if created.status_code != 201:
            return
        session, question = created.json()["id"], f"question {uuid.uuid4().hex[:8]}"
        answered = http.post(f"/v1/sessions/{session}/messages", json={"content": question})
        self.note(answered.status_code)
        if answered.status_code == 200 and answered.json()["status"] == "completed":
            with self.lock:
                content = answered.json()["message"]["content"]
                self.acknowledged.append((url, session, question, content))

    def note(self, status: int) -> None:
        with self.lock:
            self.statuses.append(status)

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restart_under_load_loses_nothing_acknowledged(
    redis: RedisServer, sim: Any, tmp_path: Path
) -> None:
    gateways = start_fleet(2, redis.url, "restart", sim.base_url, tmp_path)
    load = Load(gateways)
    threads = [threading.Thread(target=load.run, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: load.count() >= 8, timeout=30)
        redis.kill()
        wait_until(lambda: 503 in load.statuses, timeout=30)
        redis.start()
        after_restart = load.count()
        wait_until(lambda: load.count() >= after_restart + 8, timeout=30)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)
        statuses, failures = list(load.statuses), list(load.failures)
        stored = {s: _stored(gateways[0], s) for _, s, _, _ in load.acknowledged}
        for gateway in gateways:
            gateway.stop()
    assert failures == [], "every request got an answer (no hangs, no dropped connections)"
    assert set(statuses) <= {200, 201, 503}
    assert statuses.count(503) >= 1 and len(load.acknowledged) >= 16
    for _, session, question, answer in load.acknowledged:
        turns = [(m["role"], m["content"]) for m in stored[session]["messages"]]
        assert turns[:2] == [("user", question), ("assistant", answer)]


def _stored(gateway: GatewayProcess, session: str) -> Any:
    return httpx2.get(f"{gateway.url}/v1/sessions/{session}", timeout=10).json()
