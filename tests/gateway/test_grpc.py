"""The gateway over gRPC (`dskit serve --grpc-port N`): the same answers, events and
resume as the SSE stream, the same keys; and the committed generated code is current."""

from __future__ import annotations

import contextlib
import queue
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2
import orjson
import pytest
from click.testing import CliRunner

from dskit.cli import main
from dskit.gateway import GatewaySettings, KeyStore, RateLimit
from dskit.gateway._pb import gateway_pb2 as pb
from dskit.gateway._pb import gateway_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.gateway.conftest import GatewayServer, parse_sse
from tests.gateway.test_tool_pause import SUNNY, tool_session

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto/dskit/v1/gateway.proto"
GENERATED = ("gateway_pb2.py", "gateway_pb2.pyi", "gateway_pb2_grpc.py")


def _documented_command() -> list[str]:
    """The regeneration command in the .proto's header comment (with its `\\` lines)."""
    lines = [line.removeprefix("//").strip() for line in PROTO.read_text().splitlines()]
    start = next(n for n, line in enumerate(lines) if line.startswith("python -m grpc_tools"))
    end = next(n for n in range(start, len(lines)) if not lines[n].endswith("\\"))
    return shlex.split(" ".join(line.removesuffix("\\") for line in lines[start : end + 1]))


def test_the_committed_generated_code_is_what_protoc_makes_now(tmp_path: Path) -> None:
    """The command in the .proto's header (and docs/gateway.md), run into a temp dir,
    gives the committed files."""
    documented = _documented_command()
    docs = (ROOT / "docs/gateway.md").read_text().replace("\\\n", " ")
    assert shlex.join(documented) in " ".join(docs.split()), "docs/gateway.md has another command"
    command = [arg.replace("_out=src", f"_out={tmp_path}") for arg in documented]
    assert sum(arg.endswith(f"_out={tmp_path}") for arg in command) == 3, command
    subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True, timeout=60)
    for name in GENERATED:
        made = (tmp_path / "dskit/gateway/_pb" / name).read_text()
        committed = (ROOT / "src/dskit/gateway/_pb" / name).read_text()
        assert made == committed, f"{name} is stale: regenerate it (see {PROTO.name})"


# --- the service, on a real gateway ---------------------------------------------------

DEADLINE = 30.0
SLOW = (("x-sim-token-ms", "3"),)  # the sim's X-Sim-Token-Ms, as metadata
PLAIN = {"system": "You are terse.", "parameters": pb.Parameters(thinking=False)}


@pytest.fixture
def grpc_gateway(gateway_factory: Callable[..., GatewayServer]) -> GatewayServer:
    return gateway_factory(grpc_port=free_port())


@contextlib.contextmanager
def _stub(gateway: GatewayServer) -> Iterator[pb_grpc.GatewayStub]:
    with grpc.insecure_channel(f"127.0.0.1:{gateway.settings.grpc_port}") as channel:
        yield pb_grpc.GatewayStub(channel)


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _text(events: list[pb.Event]) -> str:
    return "".join(e.content for e in events if e.WhichOneof("event") == "content")


def _sse(http: httpx2.Client, session_id: str, answer_id: str) -> list[dict[str, str]]:
    raw = http.get(f"/v1/sessions/{session_id}/answers/{answer_id}/stream").text
    return [e for e in parse_sse(raw) if "id" in e]


def _same_events(events: list[pb.Event], frames: list[dict[str, str]]) -> None:
    """gRPC events and SSE frames of one answer: the same ids, types and texts."""
    assert [(e.id, e.WhichOneof("event")) for e in events] == [
        (f["id"], f["event"]) for f in frames
    ]
    for event, frame in zip(events, frames, strict=True):
        data = orjson.loads(frame["data"])
        if frame["event"] in ("content", "reasoning"):
            assert getattr(event, frame["event"]) == data["text"]
        if frame["event"] == "done":
            assert event.done.finish_reason == data["finish_reason"]
            assert event.done.usage.total_tokens == data["usage"]["total_tokens"]


def test_ask_streams_the_events_and_text_of_the_sse_stream(grpc_gateway: GatewayServer) -> None:
    question = "Explain resumable streams in detail."
    with grpc_gateway.client() as http, _stub(grpc_gateway) as stub:
        sid = http.post("/v1/sessions", json={**PLAIN, "parameters": {"thinking": False}})
        body = {"content": question, "stream": True}
        sse = parse_sse(http.post(f"/v1/sessions/{sid.json()['id']}/messages", json=body).text)
        sse_text = "".join(
            orjson.loads(e["data"])["text"] for e in sse if e.get("event") == "content"
        )
        events = list(stub.Ask(pb.AskRequest(content=question, **PLAIN), timeout=DEADLINE))
        assert _text(events) == sse_text and sse_text
        session_id, answer_id = events[0].session_id, events[0].answer_id
        assert events[-1].done.finish_reason == "stop"
        assert {(e.session_id, e.answer_id) for e in events} == {(session_id, answer_id)}
        _same_events(events, _sse(http, session_id, answer_id))
        stored = http.get(f"/v1/sessions/{session_id}").json()
    assert [m["content"] for m in stored["messages"]] == [question, sse_text]
    assert stored["system"] == "You are terse." and stored["parameters"] == {"thinking": False}


def test_resume_after_a_dropped_stream_has_no_gap_and_no_repeat(
    grpc_gateway: GatewayServer,
) -> None:
    with grpc_gateway.client() as http, _stub(grpc_gateway) as stub:
        request = pb.AskRequest(content="Tell me a long story.", **PLAIN)
        call = stub.Ask(request, metadata=SLOW, timeout=DEADLINE)
        got = [next(call) for _ in range(5)]
        call.cancel()  # the client goes away mid-answer; the answer runs on
        with pytest.raises(grpc.RpcError) as dropped:
            list(call)
        assert dropped.value.code() == grpc.StatusCode.CANCELLED
        assert got[-1].WhichOneof("event") == "content"
        session_id, answer_id = got[0].session_id, got[0].answer_id
        rest = list(stub.Ask(pb.AskRequest(after=got[-1].id), timeout=DEADLINE))
        assert rest[0].id == f"{answer_id}:6" and rest[-1].WhichOneof("event") == "done"
        assert rest[0].WhichOneof("event") == "content"  # it was dropped mid-answer
        _same_events(got + rest, _sse(http, session_id, answer_id))
        again = list(stub.Ask(pb.AskRequest(session_id=session_id, after=rest[-2].id)))
        assert again == rest[-1:]  # with its session named too; nothing after `done`


class Frames:
    """A Converse request iterator the test feeds frame by frame (`close()`: the end)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[pb.ClientFrame | None] = queue.Queue()

    def send(self, **frame: Any) -> None:
        self._queue.put(pb.ClientFrame(**frame))

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[pb.ClientFrame]:
        while (frame := self._queue.get(timeout=DEADLINE)) is not None:
            yield frame


def _until(events: Iterator[pb.Event], kind: str) -> list[pb.Event]:
    got = []
    for event in events:
        got.append(event)
        if event.WhichOneof("event") == kind:
            return got
    raise AssertionError(f"the stream ended before a {kind} event")


def test_converse_two_messages_and_a_cancel(grpc_gateway: GatewayServer) -> None:
    frames = Frames()
    message = pb.ClientFrame.Message
    with grpc_gateway.client() as http, _stub(grpc_gateway) as stub:
        events = stub.Converse(iter(frames), metadata=(("x-sim-token-ms", "20"),), timeout=DEADLINE)
        frames.send(message=message(content="hi", **PLAIN))
        first = _until(events, "done")
        frames.send(message=message(content="Now a very long story, please."))
        second = _until(events, "content")
        frames.send(cancel=pb.ClientFrame.Cancel())
        second += _until(events, "error")
        frames.close()
        assert list(events) == []  # the stream ends once the client has and its answers have
        session_id = first[0].session_id
        assert {e.session_id for e in first + second} == {session_id}
        assert second[-1].error.type == "cancelled" and second[-1].error.status == 499
        _same_events(first, _sse(http, session_id, first[0].answer_id))
        _same_events(second, _sse(http, session_id, second[0].answer_id))
        stored = http.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[1]["content"] == _text(first) and stored[3]["incomplete"] is True


def test_converse_resumes_an_answer_by_its_event_id(grpc_gateway: GatewayServer) -> None:
    with _stub(grpc_gateway) as stub:
        answer = list(stub.Ask(pb.AskRequest(content="hi", **PLAIN), timeout=DEADLINE))
        frames = Frames()
        events = stub.Converse(iter(frames), timeout=DEADLINE)
        frames.send(resume=pb.ClientFrame.Resume(after=answer[1].id))
        assert _until(events, "done") == answer[2:]
        frames.close()
        assert list(events) == []


def _next_notice(events: Iterator[pb.Event]) -> pb.Event:
    """The next `accepted` or `rejected` notice (no id: not an event of the answer)."""
    event = next(events)
    assert event.WhichOneof("event") in ("accepted", "rejected") and event.id == "", event
    return event


def test_converse_with_a_client_side_tool_pauses_and_goes_on(
    grpc_gateway: GatewayServer,
) -> None:
    result = pb.ClientFrame.ToolResult
    with grpc_gateway.client() as http, _stub(grpc_gateway) as stub:
        sid = tool_session(http)
        frames = Frames()
        events = stub.Converse(iter(frames), timeout=DEADLINE)
        frames.send(tool_result=result(tool_call_id="call_1", content="{}"))  # nothing waits
        assert _next_notice(events).rejected.code == "not_waiting_for_tools"
        ask = pb.ClientFrame.Message(content="What is the weather in Paris?", session_id=sid)
        frames.send(message=ask)
        before = _until(events, "tool_wait")
        [call] = before[-1].tool_wait.tool_calls
        assert call.name == "get_weather" and before[-1].tool_wait.timeout_seconds == 300
        answer_id = before[0].answer_id
        for frame, code in (
            (result(tool_call_id="call_nope", content="?"), "unknown_tool_call"),
            (result(tool_call_id=call.id, content=SUNNY, answer_id="nope"), "not_found"),
            (result(tool_call_id="", content=SUNNY), "invalid_request"),
        ):
            frames.send(tool_result=frame)
            rejected = _next_notice(events).rejected
            assert rejected.code == code and rejected.status in (400, 404, 422), rejected
        frames.send(tool_result=result(tool_call_id=call.id, content=SUNNY))
        accepted = _next_notice(events)
        assert accepted.answer_id == answer_id and accepted.accepted.tool_call_id == call.id
        assert list(accepted.accepted.pending) == []
        frames.send(tool_result=result(tool_call_id=call.id, content=SUNNY))  # once only
        after = _until(events, "done")
        late = [e for e in after if e.id == ""]
        after = [e for e in after if e.id]
        if not late:
            late = [_next_notice(events)]
        assert [e.rejected.code for e in late] in (
            ["duplicate_tool_result"],
            ["not_waiting_for_tools"],
        )
        assert {e.answer_id for e in before + after} == {answer_id}  # the same answer
        assert _text(after).startswith(f"get_weather returned: {SUNNY}.")
        _same_events(before + after, _sse(http, sid, answer_id))
        frames.send(message=pb.ClientFrame.Message(content="And the weather in Rome?"))
        paused = _until(events, "tool_wait")
        frames.send(cancel=pb.ClientFrame.Cancel())  # a cancel while it waits
        ended = _until(events, "error")
        assert ended[-1].error.type == "cancelled" and len(ended) == 1
        frames.close()
        assert list(events) == []
        stored = http.get(f"/v1/sessions/{sid}").json()
    assert [m["role"] for m in stored["messages"]] == [
        "user", "assistant", "tool", "assistant", "user", "assistant"
    ]  # fmt: skip
    assert stored["messages"][-1]["incomplete"] and stored["active_answer"] is None
    assert paused[0].answer_id != answer_id


def test_auth_by_gateway_keys_and_sessions_of_others_not_found(
    gateway_factory: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    db = tmp_path / "keys.sqlite3"
    with KeyStore(str(db)) as keys:
        alice, bob = keys.create("alice")[0], keys.create("bob")[0]
    gateway = gateway_factory(keys_path=str(db), grpc_port=free_port())
    ask = pb.AskRequest(content="hi", **PLAIN)
    with _stub(gateway) as stub:
        for metadata in ((), _bearer("sk-gw-not-a-key"), (("authorization", alice),)):
            for call in (
                lambda m: list(stub.Ask(ask, metadata=m, timeout=DEADLINE)),
                lambda m: list(stub.Converse(iter([]), metadata=m, timeout=DEADLINE)),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call(metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        answer = list(stub.Ask(ask, metadata=_bearer(alice), timeout=DEADLINE))
        assert answer[-1].WhichOneof("event") == "done"
        theirs = answer[0].session_id
        for request in (
            pb.AskRequest(session_id=theirs, content="mine now?"),
            pb.AskRequest(after=answer[0].id),
            pb.AskRequest(session_id=theirs, after=answer[0].id),
        ):
            with pytest.raises(grpc.RpcError) as hidden:
                list(stub.Ask(request, metadata=_bearer(bob), timeout=DEADLINE))
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND, request
        frames = Frames()
        frames.send(resume=pb.ClientFrame.Resume(after=answer[0].id))
        with pytest.raises(grpc.RpcError) as hidden:
            list(stub.Converse(iter(frames), metadata=_bearer(bob), timeout=DEADLINE))
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        mine = list(stub.Ask(pb.AskRequest(after=answer[0].id), metadata=_bearer(alice)))
    assert mine == answer[1:]


def test_a_revoked_key_ends_its_streams(
    gateway_factory: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    db = tmp_path / "keys.sqlite3"
    with KeyStore(str(db)) as keys:
        key, info = keys.create("alice")
    gateway = gateway_factory(keys_path=str(db), grpc_port=free_port(), key_check_seconds=0.1)
    metadata = (*_bearer(key), ("x-sim-token-ms", "50"))
    request = pb.AskRequest(content="A very long story, please.", **PLAIN)
    with _stub(gateway) as stub:
        call = stub.Ask(request, metadata=metadata, timeout=DEADLINE)
        assert next(call).WhichOneof("event") in ("content", "reasoning")
        with KeyStore(str(db)) as keys:
            assert keys.revoke(info.key_id)
        with pytest.raises(grpc.RpcError) as revoked:
            list(call)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(revoked.value.trailing_metadata() or ())["error-code"] == "key_revoked"


def test_rate_limit_is_resource_exhausted_with_retry_after(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    gateway = gateway_factory(rate_limit=RateLimit(rate=0.01, burst=2), grpc_port=free_port())
    with _stub(gateway) as stub:
        first = list(stub.Ask(pb.AskRequest(content="hi", **PLAIN), timeout=DEADLINE))
        assert first[-1].WhichOneof("event") == "done"  # a new session and a turn: 2 tokens
        again = pb.AskRequest(session_id=first[0].session_id, content="more")
        with pytest.raises(grpc.RpcError) as limited:
            list(stub.Ask(again, timeout=DEADLINE))
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(limited.value.trailing_metadata() or ())
    assert trailers["error-code"] == "rate_limited" and int(trailers["retry-after"]) >= 1


def test_invalid_requests_are_invalid_argument(grpc_gateway: GatewayServer) -> None:
    with _stub(grpc_gateway) as stub:
        for request in (
            pb.AskRequest(content=""),
            pb.AskRequest(content="hi", parameters=pb.Parameters(temperature=7)),
            pb.AskRequest(after="not-an-event-id"),
            pb.AskRequest(after="abc:1", content="both"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Ask(request, timeout=DEADLINE))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request


def test_grpc_port_setting_and_cli_option() -> None:
    with pytest.raises(ValueError, match="grpc_port"):
        GatewaySettings(grpc_port=70000)
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert "--grpc-port" in result.output
