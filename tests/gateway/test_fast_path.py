"""`POST /v1/chat/completions` and the streamed `POST /v1/sessions/{id}/messages`
answer bad requests the same on their fast lanes (`FastChatCompletions`,
`FastSessionMessages`) as on the documented FastAPI routes they stand in front of.

Two gateways with the same settings (keys on, a request rate limit, a tokens limit, a
small body limit), one built with `create_app(fast_chat=False)`, get the same requests:
every answer must match in status, JSON body and the headers a client acts on
(Retry-After, WWW-Authenticate, Content-Type).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from dskit.gateway import GatewaySettings, KeyStore, RateLimit
from tests.gateway.conftest import GatewayServer

CHAT = {"model": "deepseek-flash", "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
MAX_BODY = 16 * 1024
BURST = 30  # requests of one key before its rate limit; each case takes at most one
HEADERS = ("content-type", "retry-after", "www-authenticate")
LIMITED = ("limited", "slimited")  # the keys whose burst a case spends first


@dataclass(frozen=True)
class Case:
    """One request: a JSON body (or raw bytes), its headers, and whose key it carries."""

    json: Any = None
    content: bytes | Callable[[], Iterator[bytes]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = "table"  # a principal's key; None: no key; "wrong": a made-up one


def _chunks(size: int) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is met while reading
        yield b'{"model": "deepseek-flash", "messages": [{"role": "user", "content": "'
        yield b"x" * size
        yield b'"}]}'

    return chunks


JSON = {"content-type": "application/json"}
CASES = {
    "malformed JSON": Case(content=b"{not json", headers=JSON),
    "truncated JSON": Case(content=b'{"model": "deepseek-flash", "messages": [', headers=JSON),
    "empty body": Case(content=b"", headers=JSON),
    "not UTF-8": Case(content=b'{"model": "\xff"}', headers=JSON),
    "text/plain body": Case(content=orjson.dumps(CHAT), headers={"content-type": "text/plain"}),
    "form body": Case(
        content=b"model=x", headers={"content-type": "application/x-www-form-urlencoded"}
    ),
    "no content type": Case(content=orjson.dumps(CHAT)),
    "declared too large": Case(
        json={**CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}
    ),
    "streamed too large": Case(content=_chunks(2 * MAX_BODY), headers=JSON),
    "a JSON array": Case(json=[1, 2]),
    "a JSON string": Case(json="hello"),
    "null": Case(json=None, content=b"null", headers=JSON),
    "no messages": Case(json={"model": "deepseek-flash"}),
    "no model": Case(json={"messages": CHAT["messages"]}),
    "empty model": Case(json={**CHAT, "model": ""}),
    "empty messages": Case(json={**CHAT, "messages": []}),
    "messages not a list": Case(json={**CHAT, "messages": "hi"}),
    "unknown role": Case(json={**CHAT, "messages": [{"role": "robot", "content": "x"}]}),
    "message without role": Case(json={**CHAT, "messages": [{"content": "x"}]}),
    "empty content": Case(json={**CHAT, "messages": [{"role": "user", "content": ""}]}),
    "temperature a string": Case(json={**CHAT, "temperature": "hot"}),
    "temperature a bool": Case(json={**CHAT, "temperature": False}),
    "temperature too high": Case(json={**CHAT, "temperature": 5}),
    "max_tokens a string": Case(json={**CHAT, "max_tokens": "100"}),
    "max_tokens a float": Case(json={**CHAT, "max_tokens": 1.5}),
    "max_tokens zero": Case(json={**CHAT, "max_tokens": 0}),
    "stream a string": Case(json={**CHAT, "stream": "yes"}),
    "stop too long": Case(json={**CHAT, "stop": ["x"] * 17}),
    "seed too big": Case(json={**CHAT, "seed": 2**70}),
    "several problems": Case(json={"model": 3, "messages": "x", "temperature": "y"}),
    "unknown tool choice": Case(
        json={**CHAT, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    ),
    "unknown model": Case(json={**CHAT, "model": "no-such-model"}),
    "no key": Case(json=CHAT, key=None),
    "a wrong key": Case(json=CHAT, key="wrong"),
    "not a bearer": Case(json=CHAT, key=None, headers={"authorization": "Basic dXNlcjpwdw=="}),
    "over the rate limit": Case(json=CHAT, key="limited"),
    "over the tokens limit": Case(
        json={**CHAT, "messages": [{"role": "user", "content": "river " * 1500}]}, key="tokens"
    ),
}


@pytest.fixture(scope="module")
def gateways(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The fast gateway, the documented one, and their keys (one keys file, one store)."""
    tmp: Path = tmp_path_factory.mktemp("fast")
    keys = KeyStore(tmp / "keys.sqlite3")
    names = ("table", "limited", "tokens", "sessions", "slimited", "stokens", "other")
    tokens = {name: keys.create(name)[0] for name in names}
    keys.close()
    settings = GatewaySettings(
        upstream=sim.base_url, api_key="sk-test-upstream-0123456789",
        store=str(tmp / "sessions.sqlite3"), keys_path=str(tmp / "keys.sqlite3"),
        max_body_bytes=MAX_BODY, rate_limit=RateLimit(rate=1 / 3600, burst=BURST),
        tokens_limit=RateLimit(rate=1, burst=500),
    )  # fmt: skip
    fast = GatewayServer(settings).start()
    documented = GatewayServer(settings, fast_chat=False).start()
    yield fast, documented, {**tokens, "wrong": "sk-gw-not-a-real-key-000000000000000000"}
    fast.stop()
    documented.stop()


def _send(
    gateway: GatewayServer, case: Case, keys: dict[str, str], path: str = "/v1/chat/completions"
) -> httpx2.Response:
    headers = dict(case.headers)
    if case.key is not None:
        headers["authorization"] = f"Bearer {keys[case.key]}"
    if case.key in LIMITED:  # spend the key's burst first (the same way on both)
        with gateway.client(keys[case.key]) as http:
            for _ in range(BURST):
                http.post(path, json={"model": ""})
    content = case.content() if callable(case.content) else case.content
    with gateway.client() as http:
        if content is None:
            return http.post(path, json=case.json, headers=headers)
        return http.post(path, content=content, headers=headers)


def _answer(response: httpx2.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {name: response.headers[name] for name in HEADERS if name in response.headers}
    return response.status_code, response.json(), headers


def _alike(got: tuple[int, Any, dict[str, str]], expected: tuple[int, Any, dict[str, str]]) -> None:
    """The same answer; a Retry-After within seconds of the other's (each bucket refills
    while the other gateway's case runs)."""
    waits = [int(answer[2].pop("retry-after", -1)) for answer in (got, expected)]
    assert got == expected
    assert (waits[0] < 0) is (waits[1] < 0) and abs(waits[0] - waits[1]) <= 5, waits


@pytest.mark.parametrize("name", list(CASES))
def test_the_fast_path_and_the_documented_route_answer_alike(gateways: Any, name: str) -> None:
    fast, documented, keys = gateways
    case = CASES[name]
    expected = _answer(_send(documented, case, keys))
    got = _answer(_send(fast, case, keys))
    _alike(got, expected)
    assert 400 <= got[0] < 500, got  # the caller's mistake, in the one error shape
    assert set(got[1]) == {"error"} and got[1]["error"]["message"], got


def test_the_documented_route_is_what_answers_without_the_fast_path(gateways: Any) -> None:
    """The seam works: the documented gateway's app serves chat by its FastAPI route (a
    good request relayed through it answers as the fast path's does)."""
    fast, documented, keys = gateways
    assert fast.app.fast_chat and not documented.app.fast_chat
    body = {**CHAT, "temperature": 0.0}
    replies = []
    for gateway in (fast, documented):
        with gateway.client(keys["table"]) as http:
            replies.append(http.post("/v1/chat/completions", json=body).json())
    assert [r["choices"][0]["message"]["content"] for r in replies] == [
        replies[0]["choices"][0]["message"]["content"]
    ] * 2


# ---- the streamed session turn -------------------------------------------------------------

TURN = {"content": "hi", "stream": True}
SESSION_CASES = {
    "malformed JSON": Case(content=b"{not json", headers=JSON),
    "empty body": Case(content=b"", headers=JSON),
    "text/plain body": Case(content=orjson.dumps(TURN), headers={"content-type": "text/plain"}),
    "a JSON array": Case(json=[1, 2]),
    "no content": Case(json={"stream": True}),
    "empty content": Case(json={**TURN, "content": ""}),
    "content a number": Case(json={**TURN, "content": 3}),
    "stream a string": Case(json={**TURN, "stream": "yes"}),
    "an unknown field": Case(json={**TURN, "temperature": 2}),
    "a callback to nowhere allowed": Case(json={**TURN, "callback_url": "http://10.0.0.1/x"}),
    "declared too large": Case(json={**TURN, "content": "x" * MAX_BODY}),
    "no key": Case(json=TURN, key=None),
    "a wrong key": Case(json=TURN, key="wrong"),
    "another principal's session": Case(json=TURN, key="other"),
    "over the rate limit": Case(json=TURN, key="limited"),
    "over the tokens limit": Case(json={**TURN, "content": "river " * 1500}, key="tokens"),
}
ELSEWHERE = {"unknown session": "/v1/sessions/nosuchsession/messages",
             "a malformed session id": "/v1/sessions/a.b/messages"}  # fmt: skip


# the session cases' principals: each writes its own session; "other" owns none
SESSION_KEYS = {"table": "sessions", "limited": "slimited", "tokens": "stokens"}


@pytest.fixture(scope="module")
def session_paths(gateways: Any) -> dict[str, str]:
    """A session of each principal (both gateways share the store and the keys file),
    made before any case spends a burst; "other" (and no key) write to "sessions"'s."""
    fast, documented, keys = gateways
    paths = {}
    for principal in SESSION_KEYS.values():
        with fast.client(keys[principal]) as http:
            created = http.post("/v1/sessions", json={"model": "deepseek-flash"})
        assert created.status_code == 201, created.text
        paths[principal] = f"/v1/sessions/{created.json()['id']}/messages"
        with documented.client(keys[principal]) as http:  # the same tokens spent on both
            assert http.post("/v1/sessions", json={}).status_code == 201
    return paths


@pytest.mark.parametrize("name", list(SESSION_CASES))
def test_the_session_turn_answers_alike_on_both_lanes(
    gateways: Any, session_paths: dict[str, str], name: str
) -> None:
    fast, documented, keys = gateways
    case = SESSION_CASES[name]
    key = SESSION_KEYS.get(case.key or "", case.key)
    keyed = Case(case.json, case.content, case.headers, key)
    path = session_paths.get(key or "", session_paths["sessions"])
    expected = _answer(_send(documented, keyed, keys, path))
    got = _answer(_send(fast, keyed, keys, path))
    _alike(got, expected)
    assert 400 <= got[0] < 500, got
    assert set(got[1]) == {"error"} and got[1]["error"]["message"], got


@pytest.mark.parametrize("name", list(ELSEWHERE))
def test_a_turn_for_no_such_session_answers_alike(gateways: Any, name: str) -> None:
    fast, documented, keys = gateways
    case = Case(json=TURN, key="sessions")
    expected = _answer(_send(documented, case, keys, ELSEWHERE[name]))
    got = _answer(_send(fast, case, keys, ELSEWHERE[name]))
    _alike(got, expected)
    assert 400 <= got[0] < 500, got


def test_a_streamed_turn_streams_alike_on_both_lanes(gateways: Any) -> None:
    """A good streamed turn: the same events (kinds and text) from either lane, and the
    fast lane counted under the documented route's path."""
    fast, documented, keys = gateways
    streams = []
    for gateway in (fast, documented):
        with gateway.client(keys["sessions"]) as http:
            sid = http.post("/v1/sessions", json={"model": "deepseek-flash"}).json()["id"]
            reply = http.post(f"/v1/sessions/{sid}/messages", json={**TURN, "content": "rivers"})
            assert reply.status_code == 200 and reply.headers["x-answer-id"], reply.text
            assert reply.headers["content-type"].startswith("text/event-stream")
            kinds = [x.removeprefix("event: ") for x in reply.text.splitlines()
                     if x.startswith("event: ")]  # fmt: skip
            texts = [orjson.loads(x[6:]).get("text") for x in reply.text.splitlines()
                     if x.startswith("data: ")]  # fmt: skip
            streams.append((kinds, texts))
    assert streams[0] == streams[1] and streams[0][0][-1] == "done"
    with fast.client(keys["sessions"]) as http:
        metrics = http.get("/metrics").text
    assert 'method="POST",route="/v1/sessions/{session_id}/messages",status="200"' in metrics
