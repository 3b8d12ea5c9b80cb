"""`/v1/chat/completions` request and error fields: `max_completion_tokens`, logprobs
both ways, the upstream's `param`, malformed JSON, and 401s with `WWW-Authenticate`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import LocalHTTPServer, QuietHandler
from tests.gateway.conftest import GatewayServer, RecordingUpstream, parse_sse
from tests.gateway.test_auth import _create_key

CHAT = {"model": "deepseek-flash", "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
SCORES = [
    {"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108],
     "top_logprobs": [{"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108]}]},
    {"token": "lo", "logprob": -1.5, "bytes": [108, 111],
     "top_logprobs": [{"token": "lo", "logprob": -1.5, "bytes": [108, 111]}]},
]  # fmt: skip


def _chunk(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> bytes:
    chunk: dict[str, Any] = {
        "id": "cmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-flash",
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }  # fmt: skip
    if finish:
        chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class ScriptedUpstream:
    """A chat upstream answering "Hello" with logprobs per piece, or (for the message
    "fail") a 400 naming a parameter; it keeps the request bodies it got."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                bodies.append(body)
                if body["messages"][-1]["content"] == "fail":
                    error = {
                        "message": "bad field",
                        "type": "invalid_request_error",
                        "param": "messages[0].name",
                        "code": "invalid_request_error",
                    }
                    self.reply(400, orjson.dumps({"error": error}))
                    return
                stream = b"".join([
                    _chunk({"role": "assistant", "content": ""}),
                    _chunk({"content": "Hel"}, {"content": SCORES[:1]}),
                    _chunk({"content": "lo"}, {"content": SCORES[1:]}),
                    _chunk({"content": ""}, finish="stop"),
                    b"data: [DONE]\n\n",
                ])  # fmt: skip
                self.reply(200, stream, "text/event-stream")

        self._server = LocalHTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}"

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def scripted(gateway_factory: Callable[..., GatewayServer]) -> Iterator[tuple[Any, GatewayServer]]:
    upstream = ScriptedUpstream()
    yield upstream, gateway_factory(upstream=upstream.url)
    upstream.close()


def test_max_completion_tokens_is_sent_as_max_tokens(
    recording_upstream: RecordingUpstream, gateway_factory: Callable[..., GatewayServer]
) -> None:
    gateway = gateway_factory(upstream=recording_upstream.url)
    with gateway.client() as http:
        cut = http.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 3})
        same = http.post(
            "/v1/chat/completions", json={**CHAT, "max_completion_tokens": 4, "max_tokens": 4}
        )
        clash = http.post(
            "/v1/chat/completions", json={**CHAT, "max_completion_tokens": 4, "max_tokens": 5}
        )
    assert cut.status_code == 200 and cut.json()["choices"][0]["finish_reason"] == "length"
    assert cut.json()["usage"]["completion_tokens"] == 3
    assert same.status_code == 200
    sent = recording_upstream.bodies
    assert [b.get("max_tokens") for b in sent] == [3, 4]
    assert all("max_completion_tokens" not in b for b in sent)
    assert clash.status_code == 400
    error = clash.json()["error"]
    assert error["param"] == "max_completion_tokens" and "differ" in error["message"]


def test_logprobs_go_up_and_come_back(scripted: tuple[ScriptedUpstream, GatewayServer]) -> None:
    upstream, gateway = scripted
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    with client:
        whole = client.chat.completions.create(
            model="deepseek-flash", messages=[{"role": "user", "content": "hi"}],
            logprobs=True, top_logprobs=1,
        )  # fmt: skip
    assert upstream.bodies[0]["logprobs"] is True and upstream.bodies[0]["top_logprobs"] == 1
    choice = whole.choices[0]
    assert choice.message.content == "Hello"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [t.model_dump() for t in choice.logprobs.content] == SCORES
    request = {**CHAT, "logprobs": True, "top_logprobs": 1, "stream": True}
    with gateway.client() as http:
        streamed = http.post("/v1/chat/completions", json=request)
    chunks = [orjson.loads(e["data"]) for e in parse_sse(streamed.text) if e["data"] != "[DONE]"]
    scored = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert [token for lp in scored for token in lp["content"]] == SCORES


def test_upstream_error_keeps_its_param(scripted: tuple[ScriptedUpstream, GatewayServer]) -> None:
    _, gateway = scripted
    with gateway.client() as http:
        response = http.post(
            "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "fail"}]}
        )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "bad field", "type": "invalid_request_error",
        "param": "messages[0].name", "code": "invalid_request_error",
    }  # fmt: skip


def test_malformed_json_is_400(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        broken = http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        listed = http.post("/v1/chat/completions", json=[1, 2])
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("Failed to parse the request body as JSON: ")
    assert listed.status_code == 422  # JSON, of the wrong shape


def test_every_401_says_www_authenticate_bearer(
    gateway_factory: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    _create_key(tmp_path / "gateway.sqlite3", "dora")
    gateway = gateway_factory(keys_path=str(tmp_path / "gateway.sqlite3"))
    with gateway.client("sk-gw-wrong-0123456789abcdef") as http:
        answers = [
            http.post("/v1/chat/completions", json=CHAT),
            http.get("/v1/models"),
            http.get("/v1/sessions"),
            http.post("/v1/login", json={"key": "sk-gw-wrong"}),
            http.post("/v1/responses", json={"model": "deepseek-flash", "input": "x"}),
            http.post("/anthropic/v1/messages", json={}),
        ]
    for answer in answers:
        assert answer.status_code == 401, answer.request.url
        assert answer.headers["www-authenticate"] == "Bearer"
    hint = answers[0].json()["error"]["message"]
    assert hint == (
        "a valid gateway API key is required (Authorization: Bearer <key>; keys come from "
        "`dskit keys create`)"
    )
    assert "***" not in hint
