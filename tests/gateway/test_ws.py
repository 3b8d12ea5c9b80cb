"""The session WebSocket over real loopback: messages, cancel, exact resume, auth, bad
frames and adaptive flow control (`websockets`' sync client; client-side tools are in
test_tool_pause.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import wait_until
from tests.gateway.conftest import GatewayServer
from tests.gateway.test_auth import _create_key

LONG = {"thinking": True, "effort": "max"}  # 120-300 reasoning words, then the answer


def _session(http: httpx2.Client, **parameters: Any) -> str:
    body = {"system": "You are terse.", "parameters": {"thinking": False, **parameters}}
    response = http.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _url(gateway: GatewayServer, session_id: str) -> str:
    return gateway.url.replace("http://", "ws://") + f"/v1/sessions/{session_id}/ws"


def _connect(gateway: GatewayServer, sid: str, **headers: str) -> ClientConnection:
    return connect(_url(gateway, sid), additional_headers=headers, open_timeout=10)


def _recv(ws: ClientConnection, timeout: float = 15) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(ws.recv(timeout=timeout))
    return frame


def _until_end(ws: ClientConnection, ack: bool = False) -> Iterator[dict[str, Any]]:
    """Frames up to and including the answer's `done` or `error` event."""
    while True:
        frame = _recv(ws)
        yield frame
        if ack and "id" in frame:
            ws.send(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())
        if frame.get("event") in ("done", "error"):
            return


def _seq(event_id: str) -> int:
    return int(event_id.rpartition(":")[2])


def _ranges(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(_seq(e.get("from", e["id"])), _seq(e["id"])) for e in events]


def _contiguous(ranges: list[tuple[int, int]], start: int = 1) -> bool:
    expected = start
    for first, last in ranges:
        if first != expected or last < first:
            return False
        expected = last + 1
    return True


def _text(events: list[dict[str, Any]], kind: str = "content") -> str:
    return "".join(e["data"]["text"] for e in events if e.get("event") == kind)


def _logged(gateway: GatewayServer, sid: str, answer_id: str) -> list[dict[str, Any]]:
    with gateway.client() as http:
        url = f"/v1/sessions/{sid}/answers/{answer_id}/events"
        page = http.get(url, params={"wait": 0}).json()
    events: list[dict[str, Any]] = page["events"]
    return events


def test_a_message_streams_the_numbered_events_the_sse_stream_has(
    gateway: GatewayServer,
) -> None:
    with gateway.client() as http:
        sid = _session(http)
    with _connect(gateway, sid) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "hi"}).decode())
        began = _recv(ws)
        assert began["type"] == "answer"
        answer_id = began["answer_id"]
        events = list(_until_end(ws))
        assert [e["id"] for e in events] == [f"{answer_id}:{n}" for n in range(1, len(events) + 1)]
        assert events[-1]["event"] == "done" and events[-1]["data"]["finish_reason"] == "stop"
        logged = _logged(gateway, sid, answer_id)
        assert [(e["id"], e["type"], e["data"]) for e in logged] == [
            (e["id"], e["event"], e["data"]) for e in events
        ]
        ws.send(orjson.dumps({"type": "message", "content": "again"}).decode())  # same socket
        assert _recv(ws)["type"] == "answer"
        assert list(_until_end(ws))[-1]["event"] == "done"


def test_cancel_ends_the_answer_cancelled(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
    with _connect(gateway, sid, **{"X-Sim-Token-Ms": "20"}) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "tell me more"}).decode())
        assert _recv(ws)["type"] == "answer"
        assert _recv(ws)["event"] == "content"
        ws.send(orjson.dumps({"type": "cancel"}).decode())
        frames = list(_until_end(ws))
        assert frames[-1]["event"] == "error" and frames[-1]["data"]["type"] == "cancelled"
        control = [f for f in frames if f.get("type") == "cancelled"]
        if not control:
            control = [_recv(ws)]
        assert control[0]["cancelled"] is True


def test_resume_after_a_dropped_connection_is_exact(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
    seen: list[dict[str, Any]] = []
    with _connect(gateway, sid, **{"X-Sim-Token-Ms": "10"}) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "a long one"}).decode())
        answer_id = _recv(ws)["answer_id"]
        while len(seen) < 5:
            seen.append(_recv(ws))
    with _connect(gateway, sid) as ws:  # a new connection, after the last id seen
        ws.send(orjson.dumps({"type": "resume", "after": seen[-1]["id"]}).decode())
        seen += list(_until_end(ws))
    assert [e["id"] for e in seen] == [f"{answer_id}:{n}" for n in range(1, len(seen) + 1)]
    assert seen == [
        {"id": e["id"], "event": e["type"], "data": e["data"]}
        for e in _logged(gateway, sid, answer_id)
    ]
    with _connect(gateway, sid) as ws:  # resume without a cursor: the whole answer again
        ws.send(orjson.dumps({"type": "resume", "after": f"{answer_id}:0"}).decode())
        assert list(_until_end(ws)) == seen


def test_auth_is_refused_without_a_key_and_cross_origin_cookies(
    gateway_factory: Any, tmp_path: Any
) -> None:
    db = tmp_path / "gateway.sqlite3"
    key = _create_key(db, "alice")
    gateway: GatewayServer = gateway_factory(keys_path=str(db))
    with gateway.client(key) as http:
        sid = _session(http)
    with pytest.raises(InvalidStatus) as refused:
        _connect(gateway, sid)
    assert refused.value.response.status_code == 401
    cookie = {"Cookie": f"dskit_gateway_key={key}"}
    with pytest.raises(InvalidStatus) as cross:
        _connect(gateway, sid, Origin="http://evil.example", **cookie)
    assert cross.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as other:  # someone else's session: not found
        _connect(gateway, "nosuchsession", Authorization=f"Bearer {key}")
    assert other.value.response.status_code == 404
    origin = gateway.url
    for headers in ({"Authorization": f"Bearer {key}"}, {"Origin": origin, **cookie}):
        with _connect(gateway, sid, **headers) as ws:
            ws.send(orjson.dumps({"type": "message", "content": "hi"}).decode())
            assert _recv(ws)["type"] == "answer"
            assert list(_until_end(ws))[-1]["event"] == "done"


def test_bad_frames_get_one_error_each_and_the_connection_stays_usable(
    gateway: GatewayServer,
) -> None:
    with gateway.client() as http:
        sid = _session(http)
    with _connect(gateway, sid) as ws:
        bad = ["not json", "[1, 2]", '{"type": "dance"}', '{"type": "message", "content": 3}',
               '{"type": "resume", "after": "nope"}', '{"type": "ack", "id": 7}',
               '{"type": "resume", "after": "someoneelse:3"}',
               '{"type": "tool_result", "tool_call_id": "x", "content": "y"}']  # fmt: skip
        for text in bad:
            ws.send(text)
            frame = _recv(ws)
            assert frame["type"] == "error", (text, frame)
            assert frame["error"]["status"] in (400, 404, 409) and frame["error"]["message"]
        ws.send(orjson.dumps({"type": "message", "content": "hi"}).decode())
        assert _recv(ws)["type"] == "answer"
        assert list(_until_end(ws))[-1]["event"] == "done"
    with _connect(gateway, sid) as ws:  # a binary frame: an error, then a 1003 close
        ws.send(b"\x00\x01")
        assert _recv(ws)["type"] == "error"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
    with gateway.client() as http:
        assert http.get("/healthz").status_code == 200


def test_a_client_that_keeps_up_gets_one_event_per_token(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = _session(http)
    with _connect(gateway, sid, **{"X-Sim-Token-Ms": "10"}) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "hello there"}).decode())
        answer_id = _recv(ws)["answer_id"]
        events = list(_until_end(ws, ack=True))
    assert not any("from" in e for e in events)
    assert len(events) == len(_logged(gateway, sid, answer_id))


def test_a_client_that_falls_behind_gets_fewer_larger_events_then_catches_up(
    gateway: GatewayServer,
) -> None:
    with gateway.client() as http:
        sid = _session(http, **LONG)
    with _connect(gateway, sid, **{"X-Sim-Token-Ms": "5"}) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "think hard"}).decode())
        answer_id = _recv(ws)["answer_id"]
        events = []
        for frame in _until_end(ws, ack=True):  # keeps up (and acks) for a while
            events.append(frame)
            if len(events) == 4:
                break
        logged_then = len(_logged(gateway, sid, answer_id))

        def grown() -> bool:  # stops reading and acking while the answer goes on
            return len(_logged(gateway, sid, answer_id)) > logged_then + 100

        wait_until(grown, timeout=30)
        events += list(_until_end(ws, ack=True))  # reads and acks again
    logged = _logged(gateway, sid, answer_id)
    ranges = _ranges(events)
    assert _contiguous(ranges) and ranges[-1][1] == len(logged)
    coalesced = [e for e in events if "from" in e]
    assert coalesced and len(events) < len(logged) - 50, (len(events), len(logged), ranges)
    for kind in ("content", "reasoning"):
        assert _text(events, kind) == "".join(
            e["data"]["text"] for e in logged if e["type"] == kind
        )
    assert not any("from" in e for e in events[:4])


def test_without_adaptive_flow_acks_do_not_merge_events(gateway_factory: Any) -> None:
    gateway = gateway_factory(adaptive_flow=False)
    with gateway.client() as http:
        sid = _session(http, **LONG)
    with _connect(gateway, sid, **{"X-Sim-Token-Ms": "2"}) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "think hard"}).decode())
        answer_id = _recv(ws)["answer_id"]
        first = _recv(ws)
        ws.send(orjson.dumps({"type": "ack", "id": first["id"]}).decode())
        wait_until(lambda: _logged(gateway, sid, answer_id)[-1]["type"] == "done", timeout=30)
        events = [first, *_until_end(ws, ack=True)]  # it acks, but far behind
    assert not any("from" in e for e in events)
    assert len(events) == len(_logged(gateway, sid, answer_id))


@pytest.mark.parametrize("streaming", [True, False])
def test_revoking_a_key_closes_its_websocket(
    gateway_factory: Any, tmp_path: Any, streaming: bool
) -> None:
    """A revoked key's WebSocket ends within the key check interval, while an answer
    streams (that was never checked: only an idle follower looked) or while it waits."""
    from dskit.gateway import KeyStore

    db = tmp_path / "gateway.sqlite3"
    key = _create_key(db, "mallory")
    gateway: GatewayServer = gateway_factory(keys_path=str(db), key_check_seconds=0.1)
    with gateway.client(key) as http:
        sid = _session(http)
    auth = {"Authorization": f"Bearer {key}", "X-Sim-Token-Ms": "40"}  # a long answer
    with _connect(gateway, sid, **auth) as ws:
        if streaming:
            ws.send(orjson.dumps({"type": "message", "content": "a long story"}).decode())
            assert "answer_id" in _recv(ws)
            assert _recv(ws)["event"] in ("content", "reasoning")
        with KeyStore(str(db)) as keys:
            assert keys.revoke(keys.list_keys()[0].key_id)
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(_recv(ws, timeout=10))
    errors = [f for f in frames if f.get("type") == "error"]
    assert [e["error"]["code"] for e in errors] == ["key_revoked"], frames[-3:]
    assert not any(f.get("event") == "done" for f in frames)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
