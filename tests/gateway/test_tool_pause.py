"""Client-side tools over real sockets: an answer that calls the session's tools pauses
(`tool_wait`), takes the results from the WebSocket or `POST .../tool_results`, and goes
on as the same answer (same id, seqs continuing, a new upstream request); or ends once on
a timeout or a cancel, the session left usable. Bad results are one error each, nothing
stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import orjson
import pytest
from websockets.sync.client import ClientConnection

from tests.conftest import wait_until
from tests.gateway.conftest import GatewayServer, RecordingUpstream, parse_sse
from tests.gateway.test_ws import _connect, _logged, _recv

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}  # fmt: skip
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}  # fmt: skip
SUNNY = "sunny, 21 C"


def tool_session(http: httpx2.Client, *tools: dict[str, Any]) -> str:
    body = {"system": "You are terse.",
            "parameters": {"thinking": False, "tools": list(tools or [WEATHER])}}  # fmt: skip
    response = http.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(orjson.dumps(frame).decode())


def events_until(ws: ClientConnection, *kinds: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The answer's events up to one of `kinds` (included), and the control frames that
    came meanwhile."""
    events, control = [], []
    while True:
        frame = _recv(ws)
        if "id" not in frame:
            control.append(frame)
            continue
        events.append(frame)
        if frame["event"] in kinds:
            return events, control


def control_frame(ws: ClientConnection, held: list[Any]) -> dict[str, Any]:
    """The next control frame (one that came with events first, if any)."""
    if held:
        frame: dict[str, Any] = held.pop(0)
        return frame
    while "id" in (frame := _recv(ws)):
        raise AssertionError(f"an event while a control frame was expected: {frame}")
    return frame


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == "content")


def seqs(events: list[dict[str, Any]], answer_id: str) -> list[int]:
    assert {e["id"].rpartition(":")[0] for e in events} == {answer_id}
    return [int(e["id"].rpartition(":")[2]) for e in events]


def turns(http: httpx2.Client, sid: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = http.get(f"/v1/sessions/{sid}").json()["messages"]
    return messages


@pytest.fixture
def recorded(
    gateway_factory: Callable[..., GatewayServer], recording_upstream: RecordingUpstream
) -> tuple[GatewayServer, RecordingUpstream]:
    return gateway_factory(upstream=recording_upstream.url), recording_upstream


def test_the_answer_pauses_on_the_tool_call_and_goes_on_as_the_same_answer(
    recorded: tuple[GatewayServer, RecordingUpstream],
) -> None:
    gateway, upstream = recorded
    with gateway.client() as http, _connect(gateway, sid := tool_session(http)) as ws:
        send(ws, type="message", content="What is the weather in Paris?")
        answer_id = _recv(ws)["answer_id"]
        before, held = events_until(ws, "tool_wait", "done", "error")
        wait = before[-1]
        assert wait["event"] == "tool_wait", before
        [call] = wait["data"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
        assert wait["data"]["timeout_seconds"] == 300
        assert [e["event"] for e in before if e["event"] == "tool_call"]  # the calls streamed
        waiting = http.get(f"/v1/sessions/{sid}").json()
        assert waiting["active_answer"] == answer_id  # the answer has not ended
        assert waiting["messages"][-1]["tool_calls"] and waiting["messages"][-1]["incomplete"]
        send(ws, type="tool_result", tool_call_id=call["id"], content=SUNNY)
        after, more = events_until(ws, "done", "error")
        accepted = control_frame(ws, held + more)
        assert accepted == {"type": "tool_result_accepted", "answer_id": answer_id,
                            "tool_call_id": call["id"], "pending": []}  # fmt: skip
        events = before + after
        assert seqs(events, answer_id) == list(range(1, len(events) + 1))  # one answer
        assert events[-1]["event"] == "done" and events[-1]["data"]["finish_reason"] == "stop"
        assert text_of(after).startswith(f"get_weather returned: {SUNNY}.")  # the result used
        assert [(e["id"], e["event"], e["data"]) for e in events] == [
            (e["id"], e["type"], e["data"]) for e in _logged(gateway, sid, answer_id)
        ]
        stored = turns(http, sid)
    assert [t["role"] for t in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1]["tool_calls"][0]["id"] == call["id"] and not stored[1]["incomplete"]
    assert stored[2]["content"] == SUNNY
    assert stored[3]["content"] == text_of(after) and not stored[3]["incomplete"]
    assert [t["answer_id"] for t in stored] == [None, answer_id, None, answer_id]
    assert len(upstream.bodies) == 2  # the pause made a second upstream request
    sent = upstream.bodies[1]["messages"]
    assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "tool"]
    assert sent[-2]["tool_calls"][0]["id"] == call["id"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call["id"], "content": SUNNY}


def test_two_calls_wait_for_both_and_bad_results_are_one_error_each(
    gateway: GatewayServer,
) -> None:
    with (
        gateway.client() as http,
        _connect(gateway, sid := tool_session(http, WEATHER, CLOCK)) as ws,
    ):
        send(ws, type="tool_result", tool_call_id="call_x", content="early")  # nothing waits
        refused = control_frame(ws, [])
        assert refused["error"]["code"] == "not_waiting_for_tools", refused
        send(ws, type="message", content="Use get_weather and get_time for Paris.")
        answer_id = _recv(ws)["answer_id"]
        before, held = events_until(ws, "tool_wait")
        first, second = (c["id"] for c in before[-1]["data"]["tool_calls"])
        cases = [
            ({"tool_call_id": second, "content": "12:00"}, None),  # the later call first
            ({"tool_call_id": second, "content": "again"}, "duplicate_tool_result"),
            ({"tool_call_id": "call_nope", "content": "?"}, "unknown_tool_call"),
            ({"tool_call_id": first, "content": 7}, "invalid_request"),
            ({"tool_call_id": first, "content": "x", "answer_id": "a b"}, "answer_id"),
        ]
        for frame, code in cases:
            send(ws, type="tool_result", **frame)
            reply = control_frame(ws, held)
            if code is None:
                assert reply == {"type": "tool_result_accepted", "answer_id": answer_id,
                                 "tool_call_id": second, "pending": [first]}  # fmt: skip
            else:
                assert reply["type"] == "error", (frame, reply)
                assert code in (reply["error"]["code"], reply["error"]["param"]), reply
        assert turns(http, sid)[-1]["role"] == "assistant"  # nothing stored while it waits
        send(ws, type="tool_result", tool_call_id=first, content=SUNNY, answer_id=answer_id)
        after, more = events_until(ws, "done", "error")
        assert control_frame(ws, held + more)["pending"] == []
        assert after[-1]["event"] == "done", after[-1]
        assert seqs(before + after, answer_id) == list(range(1, len(before + after) + 1))
        text = text_of(after)
        assert text.startswith(f"get_weather returned: {SUNNY}. get_time returned: 12:00.")
        send(ws, type="tool_result", tool_call_id=first, content="late")  # the answer ended
        late = control_frame(ws, [])
        assert late["error"]["code"] == "not_waiting_for_tools"
        assert late["error"]["status"] == 409
        stored = turns(http, sid)
    assert [t["role"] for t in stored] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [t["content"] for t in stored[2:4]] == [SUNNY, "12:00"]  # once each, calls' order


def test_sse_and_rest_clients_send_results_over_http(gateway: GatewayServer) -> None:
    with gateway.client() as http, gateway.client() as other:
        sid = tool_session(http)
        body = {"content": "What is the weather in Paris?", "stream": True}
        with http.stream("POST", f"/v1/sessions/{sid}/messages", json=body) as response:
            answer_id = response.headers["X-Answer-Id"]
            lines = response.iter_lines()
            frames: list[dict[str, str]] = []
            while not frames or frames[-1].get("event") != "tool_wait":
                block = []
                while (line := next(lines)) != "":
                    block.append(line)
                frames += [f for f in parse_sse("\n".join(block) + "\n\n") if "event" in f]
            call_id = orjson.loads(frames[-1]["data"])["tool_calls"][0]["id"]
            url = f"/v1/sessions/{sid}/answers/{answer_id}/tool_results"
            assert other.post(url, json={"tool_call_id": call_id}).status_code == 422
            elsewhere = other.post(
                f"/v1/sessions/{tool_session(other)}/answers/{answer_id}/tool_results",
                json={"tool_call_id": call_id, "content": SUNNY},
            )  # fmt: skip
            assert elsewhere.status_code == 404  # another session's answer
            taken = other.post(url, json={"tool_call_id": call_id, "content": SUNNY})
            assert taken.status_code == 202, taken.text
            assert taken.json() == {"answer_id": answer_id, "tool_call_id": call_id,
                                    "pending": []}  # fmt: skip
            rest = parse_sse("\n".join(lines) + "\n\n")  # the same response goes on
        again = other.post(url, json={"tool_call_id": call_id, "content": SUNNY})
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_waiting_for_tools"
        events = [f for f in frames + rest if "event" in f]
        assert [f["id"] for f in events] == [f"{answer_id}:{n}" for n in range(1, len(events) + 1)]
        assert events[-1]["event"] == "done"
        schema = http.get("/openapi.json").json()
        route = schema["paths"]["/v1/sessions/{session_id}/answers/{answer_id}/tool_results"]
    assert "ToolResultCreate" in str(route["post"]["requestBody"])
    assert "ToolResultAccepted" in str(route["post"]["responses"]["202"])


def _ended(http: httpx2.Client, sid: str, answer_id: str) -> list[dict[str, Any]]:
    """The answer's events once it finished (one terminal event, the last), the session's
    active answer cleared."""
    url = f"/v1/sessions/{sid}/answers/{answer_id}/events"

    def finished() -> dict[str, Any] | None:
        page: dict[str, Any] = http.get(url, params={"wait": 5}).json()
        return page if page["finished"] else None

    events: list[dict[str, Any]] = wait_until(finished)["events"]
    wait_until(lambda: http.get(f"/v1/sessions/{sid}").json()["active_answer"] is None)
    kinds = [e["type"] for e in events]
    assert kinds.count("done") + kinds.count("error") == 1 and kinds[-1] in ("done", "error")
    return events


def _left_usable(
    http: httpx2.Client, sid: str, upstream: RecordingUpstream, call_id: str, code: str
) -> None:
    """The turn with the call is kept, cut off with how it ended; a late result is
    refused; the next message is answered without sending the unanswered call."""
    stored = turns(http, sid)
    assert [t["role"] for t in stored] == ["user", "assistant"]
    assert stored[1]["tool_calls"][0]["id"] == call_id and stored[1]["incomplete"] is True
    answer_id = stored[1]["answer_id"]
    late = http.post(
        f"/v1/sessions/{sid}/answers/{answer_id}/tool_results",
        json={"tool_call_id": call_id, "content": SUNNY},
    )  # fmt: skip
    assert late.status_code == 409, late.text
    result = http.get(f"/v1/sessions/{sid}/answers/{answer_id}").json()
    assert result["status"] != "completed" and result["error"]["code"] == code
    sent = len(upstream.bodies)
    reply = http.post(f"/v1/sessions/{sid}/messages", json={"content": "Say hello instead."})
    assert reply.status_code == 200 and reply.json()["status"] == "completed", reply.text
    assert not any(m.get("tool_calls") for m in upstream.bodies[sent]["messages"])


def test_a_timeout_ends_the_answer_once_and_leaves_the_session_usable(
    gateway_factory: Callable[..., GatewayServer], recording_upstream: RecordingUpstream
) -> None:
    gateway = gateway_factory(upstream=recording_upstream.url, tool_result_timeout_seconds=0.5)
    with gateway.client() as http:
        sid = tool_session(http)
        body = {"content": "What is the weather in Paris?", "background": True}
        answer_id = http.post(f"/v1/sessions/{sid}/messages", json=body).json()["answer_id"]
        events = _ended(http, sid, answer_id)
        kinds = [e["type"] for e in events]
        assert kinds[-2:] == ["tool_wait", "error"], kinds
        assert events[-1]["data"]["code"] == "tool_timeout" and events[-1]["data"]["status"] == 408
        call_id = events[-2]["data"]["tool_calls"][0]["id"]
        _left_usable(http, sid, recording_upstream, call_id, "tool_timeout")


def test_a_cancel_while_waiting_ends_the_answer_cancelled(
    recorded: tuple[GatewayServer, RecordingUpstream],
) -> None:
    gateway, upstream = recorded
    with gateway.client() as http, _connect(gateway, sid := tool_session(http)) as ws:
        send(ws, type="message", content="What is the weather in Paris?")
        answer_id = _recv(ws)["answer_id"]
        before, held = events_until(ws, "tool_wait")
        send(ws, type="cancel")
        after, more = events_until(ws, "done", "error")
        assert after == [after[-1]] and after[-1]["data"]["type"] == "cancelled"
        held += more
        assert control_frame(ws, held) == {"type": "cancelled", "answer_id": answer_id,
                                           "cancelled": True}  # fmt: skip
        assert len(_ended(http, sid, answer_id)) == len(before) + 1
        call_id = before[-1]["data"]["tool_calls"][0]["id"]
        _left_usable(http, sid, upstream, call_id, "cancelled")
