"""A WebSocket conversation that drops mid-answer resumes exactly on another instance
(two gateways on one Redis: the answer's log is shared)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.gateway.test_ws import _connect, _logged, _recv, _session, _until_end

pytestmark = pytest.mark.redis


def test_a_dropped_websocket_resumes_on_the_other_instance(
    gateway_factory: Any, sim: Any, redis_url: str, redis_prefix: str
) -> None:
    shared = {"redis": redis_url, "store": redis_url, "redis_namespace": redis_prefix}
    first, second = gateway_factory(**shared), gateway_factory(**shared)
    with first.client() as http:
        sid = _session(http)
    with _connect(first, sid, **{"X-Sim-Token-Ms": "5"}) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "Tell me a long story"}).decode())
        answer_id = _recv(ws)["answer_id"]
        seen = [_recv(ws) for _ in range(5)]  # then the connection drops
    with _connect(second, sid) as ws:
        ws.send(orjson.dumps({"type": "resume", "after": seen[-1]["id"]}).decode())
        seen += list(_until_end(ws))
    assert [e["id"] for e in seen] == [f"{answer_id}:{n}" for n in range(1, len(seen) + 1)]
    logged = _logged(second, sid, answer_id)
    assert seen == [{"id": e["id"], "event": e["type"], "data": e["data"]} for e in logged]
    assert seen[-1]["event"] == "done"
