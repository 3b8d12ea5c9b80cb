"""What the gateway sends upstream for a stored session: what `ChatSession` would send.

Sessions are shared with the CLI through the same store, so a session may hold summaries,
cut-off answers and keys the API does not know. Each test stores such a history through
the store API, sends a message through the gateway over HTTP, and reads the request the
upstream got from a recording pass-through to the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from dskit.session._core import SUMMARY_HEADER
from dskit.store import StoredMessage, open_store
from tests.gateway.conftest import GatewayServer, RecordingUpstream

SYSTEM = "You are terse."
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


@pytest.fixture
def relayed(
    gateway_factory: Callable[..., GatewayServer], recording_upstream: RecordingUpstream
) -> GatewayServer:
    return gateway_factory(upstream=recording_upstream.url)


def _stored_session(http: httpx2.Client, store_path: Path, history: list[StoredMessage]) -> str:
    """A session the gateway owns, its history written as the CLI would write it."""
    created = http.post("/v1/sessions", json={"system": SYSTEM})
    assert created.status_code == 201, created.text
    session_id = str(created.json()["id"])
    store = open_store(str(store_path))
    try:
        store.append(session_id, history, expected_version=store.load(session_id).version)
    finally:
        store.close()
    return session_id


def _ask(http: httpx2.Client, session_id: str, text: str) -> dict[str, Any]:
    answer = http.post(f"/v1/sessions/{session_id}/messages", json={"content": text})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    return dict(answer.json())


def test_summary_cut_off_answers_and_extra_keys_are_sent_as_a_session_sends_them(
    relayed: GatewayServer, recording_upstream: RecordingUpstream, tmp_path: Path
) -> None:
    history = [
        StoredMessage({"role": "user", "content": "old question"}),
        StoredMessage({"role": "assistant", "content": "old answer"}),
        StoredMessage({"role": "system", "content": "they talked about X"}, summary=True, covers=2),
        StoredMessage({"role": "user", "content": "second question", "client_ts": 17}),
        StoredMessage(  # cut off mid tool call: its call never got a result
            {
                "role": "assistant",
                "content": "half an",
                "reasoning_content": "hmm",
                "tool_calls": [CALL],
            },
            incomplete=True,
        ),
        StoredMessage({"role": "user", "content": "third question"}),
        StoredMessage(  # cut off before any text: nothing to send
            {"role": "assistant", "content": "", "tool_calls": [CALL]}, incomplete=True
        ),
    ]
    with relayed.client() as http:
        sid = _stored_session(http, tmp_path / "sessions.sqlite3", history)
        _ask(http, sid, "fourth question")
    [sent] = recording_upstream.bodies
    assert sent["messages"] == [
        {"role": "system", "content": f"{SYSTEM}\n\n{SUMMARY_HEADER}they talked about X"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "half an"},
        {"role": "user", "content": "third question"},
        {"role": "user", "content": "fourth question"},
    ]


def test_old_turns_are_dropped_to_fit_the_window(
    relayed: GatewayServer, recording_upstream: RecordingUpstream, tmp_path: Path
) -> None:
    huge = "word " * 1_100_000  # 1.1M tokens: more than deepseek-flash's window (1M)
    history = [
        StoredMessage({"role": "user", "content": huge}),
        StoredMessage({"role": "assistant", "content": "noted"}),
        StoredMessage({"role": "user", "content": "recent question"}),
        StoredMessage({"role": "assistant", "content": "recent answer"}),
    ]
    with relayed.client() as http:
        sid = _stored_session(http, tmp_path / "sessions.sqlite3", history)
        _ask(http, sid, "next question")
        stored = http.get(f"/v1/sessions/{sid}").json()["messages"]
    [sent] = recording_upstream.bodies
    assert [m["content"] for m in sent["messages"]] == [
        SYSTEM, "recent question", "recent answer", "next question",
    ]  # fmt: skip
    assert len(stored) == 6 and stored[0]["content"] == huge  # dropped from the request only


def test_a_question_that_cannot_fit_is_refused_and_not_stored(
    relayed: GatewayServer, recording_upstream: RecordingUpstream
) -> None:
    # the window comes from the upstream's GET /models: here a small self-hosted model
    small = {"id": "deepseek-flash", "context_window": 32_768, "max_output_tokens": 4096}
    recording_upstream.models = [small]
    with relayed.client() as http:
        sid = http.post("/v1/sessions", json={"system": SYSTEM}).json()["id"]
        for stream in (False, True):
            body = {"content": "word " * 30_000, "stream": stream}  # about 45K tokens
            refused = http.post(f"/v1/sessions/{sid}/messages", json=body)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "context_length_exceeded"
        assert http.get(f"/v1/sessions/{sid}").json()["messages"] == []
    assert recording_upstream.bodies == []
