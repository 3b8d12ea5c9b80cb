"""The Anthropic Messages and OpenAI Responses relays, through the real `anthropic` and
`openai` SDKs, over loopback HTTP to the real simulator."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from dskit.gateway import RateLimit
from tests.conftest import LocalHTTPServer, QuietHandler, wait_until
from tests.gateway.conftest import GatewayServer
from tests.gateway.test_auth import _create_key

UPSTREAM_KEY = "sk-test-upstream-0123456789"  # what gateway_factory configures
WEATHER_ANTHROPIC = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}
WEATHER_RESPONSES = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": WEATHER_ANTHROPIC["input_schema"],
}
CLAUDE = "claude-sonnet-4-5"


def claude(
    gateway: GatewayServer, key: str = "anything", bearer: bool = False
) -> anthropic.Anthropic:
    """The SDK as Claude Code uses it: the key in `x-api-key`, or (`bearer`) as a token."""
    credential = {"auth_token": key} if bearer else {"api_key": key}
    return anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", max_retries=0, **credential)


def oai(gateway: GatewayServer, key: str = "anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


@pytest.fixture
def sdk(gateway: GatewayServer) -> Iterator[anthropic.Anthropic]:
    client = claude(gateway)
    yield client
    client.close()


@pytest.fixture
def osdk(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    client = oai(gateway)
    yield client
    client.close()


def unsigned(blocks: list[Any]) -> list[dict[str, Any]]:
    dumped = [b.model_dump(exclude_none=True) if hasattr(b, "model_dump") else b for b in blocks]
    return [{k: v for k, v in b.items() if k != "signature"} for b in dumped]


def event_names(body: bytes) -> list[str]:
    names = []
    for block in body.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("event: "):
                names.append(line[7:])
    return names


# ---- Anthropic ---------------------------------------------------------------------


def test_anthropic_message_is_the_upstreams(sdk: anthropic.Anthropic, sim: Any) -> None:
    through = sdk.messages.create(
        model=CLAUDE, max_tokens=512, messages=[{"role": "user", "content": "Hello Claude"}]
    )
    with httpx2.Client(base_url=sim.base_url, timeout=20) as http:
        direct = http.post(
            "/anthropic/v1/messages", headers={"x-api-key": UPSTREAM_KEY},
            json={"model": CLAUDE, "max_tokens": 512,
                  "messages": [{"role": "user", "content": "Hello Claude"}]},
        ).json()  # fmt: skip
    assert [b.type for b in through.content] == ["thinking", "text"]
    assert unsigned(through.content) == unsigned(direct["content"])
    assert through.usage.output_tokens == direct["usage"]["output_tokens"]


def test_anthropic_stream_passes_the_upstream_events(
    sdk: anthropic.Anthropic, gateway: GatewayServer
) -> None:
    whole = sdk.messages.create(
        model=CLAUDE, max_tokens=512, messages=[{"role": "user", "content": "stream me"}]
    )
    with sdk.messages.stream(
        model=CLAUDE, max_tokens=512, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        final = stream.get_final_message()
    assert unsigned(final.content) == unsigned(whole.content)
    request = {"model": CLAUDE, "max_tokens": 64, "stream": True,
               "messages": [{"role": "user", "content": "raw"}]}  # fmt: skip
    with gateway.client() as http:
        raw = http.post("/anthropic/v1/messages", json=request)
    assert raw.headers["content-type"].startswith("text/event-stream")
    names = event_names(raw.content)
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert b"[DONE]" not in raw.content


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_loop_in_thinking_mode(sdk: anthropic.Anthropic, stream: bool) -> None:
    def ask(history: list[Any]) -> anthropic.types.Message:
        params: dict[str, Any] = {"model": CLAUDE, "max_tokens": 2048, "messages": history,
                                  "tools": [WEATHER_ANTHROPIC], "thinking": {"type": "enabled",
                                  "budget_tokens": 1024}}  # fmt: skip
        if not stream:
            return sdk.messages.create(**params)
        with sdk.messages.stream(**params) as events:
            return events.get_final_message()

    question = {"role": "user", "content": "Please call get_weather for Lisbon for 3 days"}
    first = ask([question])
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    use = first.content[1]
    assert use.type == "tool_use" and use.input == {"city": "Lisbon", "days": 3}
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}
    history = [question, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [result]}]  # fmt: skip
    second = ask(history)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "thinking"
    answer = second.content[-1]
    assert answer.type == "text" and "get_weather returned: sunny, 21 C" in answer.text
    dropped = [history[0], {"role": "assistant", "content": [first.content[1]]}, history[2]]
    with pytest.raises(anthropic.BadRequestError, match="must be passed back"):
        ask(dropped)  # the upstream's own check, its message kept


def test_anthropic_count_tokens(sdk: anthropic.Anthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "count these words please"}]
    counted = sdk.messages.count_tokens(model=CLAUDE, messages=messages, system="Be brief")
    answer = sdk.messages.create(model=CLAUDE, max_tokens=64, messages=messages, system="Be brief")
    usage = answer.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert counted.input_tokens > 0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("400", anthropic.BadRequestError),
        ("429", anthropic.RateLimitError),
        ("500", anthropic.InternalServerError),
        ("503", anthropic.InternalServerError),
    ],
)
def test_anthropic_upstream_errors_keep_status_and_shape(
    sdk: anthropic.Anthropic, status: str, kind: type[anthropic.APIStatusError]
) -> None:
    messages: list[Any] = [{"role": "user", "content": "x"}]
    with pytest.raises(kind) as caught:
        sdk.messages.create(
            model=CLAUDE, max_tokens=64, messages=messages, extra_headers={"X-Sim-Status": status}
        )
    assert caught.value.status_code == int(status)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    with pytest.raises(kind):  # streamed: the error comes before the stream starts
        sdk.messages.create(
            model=CLAUDE, max_tokens=64, messages=messages, stream=True,
            extra_headers={"X-Sim-Status": status},
        )  # fmt: skip


def test_anthropic_unknown_model_keeps_the_upstream_message(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(
            model="gpt-4o", max_tokens=64, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "gpt-4o" in caught.value.message


def test_anthropic_broken_stream_is_an_error_event(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk.messages.stream(
            model=CLAUDE, max_tokens=512, messages=[{"role": "user", "content": "drop"}],
            extra_headers={"X-Sim-Drop-After-Events": "3"},
        ) as stream:  # fmt: skip
            stream.get_final_message()
    assert "upstream" in caught.value.message


def test_malformed_and_non_object_bodies_are_400(gateway: GatewayServer) -> None:
    json_header = {"content-type": "application/json"}
    with gateway.client() as http:
        for path in ("/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens"):
            broken = http.post(path, content=b"{not json", headers=json_header)
            assert broken.status_code == 400
            assert broken.json()["type"] == "error"
            assert "JSON" in broken.json()["error"]["message"]
            listed = http.post(path, json=[1, 2])
            assert listed.status_code == 400 and listed.json()["error"]["message"]
        for path in ("/v1/responses", "/responses"):
            broken = http.post(path, content=b"{not json", headers=json_header)
            assert broken.status_code == 400
            assert broken.json()["error"]["code"] == "invalid_json"


def test_body_limit_applies(gateway_factory: Callable[..., GatewayServer]) -> None:
    gateway = gateway_factory(max_body_bytes=4096)
    big = {"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": "x" * 9000}]}
    with gateway.client() as http:
        assert http.post("/anthropic/v1/messages", json=big).status_code == 413
        assert http.post("/v1/responses", json={"model": "m", "input": "x" * 9000}).status_code == (
            413
        )


def test_client_leaving_closes_the_upstream_request(
    sim_factory: Callable[..., Any], gateway_factory: Callable[..., GatewayServer]
) -> None:
    own = sim_factory()
    gateway = gateway_factory(upstream=own.base_url)
    request = {"model": CLAUDE, "max_tokens": 4096, "stream": True,
               "messages": [{"role": "user", "content": "a long one"}]}  # fmt: skip
    with (
        gateway.client() as http,
        http.stream(
            "POST", "/anthropic/v1/messages", json=request, headers={"X-Sim-Token-Ms": "50"}
        ) as response,
    ):
        assert response.status_code == 200
        # held: a dropped iterator is closed at once, and closes the connection with it
        # (the test then raced its own disconnect, and lost it on a busy machine)
        chunks = response.iter_bytes()
        next(chunks)  # the head may go out before the upstream request
        wait_until(lambda: own.app.active == 1)
    wait_until(lambda: own.app.active == 0)
    wait_until(lambda: gateway.gw.metrics.active_streams._value.get() == 0)


# ---- auth, limits, metrics, redaction ------------------------------------------------


def test_auth_in_each_format(gateway_factory: Callable[..., GatewayServer], tmp_path: Path) -> None:
    key = _create_key(tmp_path / "gateway.sqlite3", "alice")
    gateway = gateway_factory(keys_path=str(tmp_path / "gateway.sqlite3"))
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with claude(gateway, key) as by_x_api_key, claude(gateway, key, bearer=True) as by_bearer:
        assert by_x_api_key.messages.create(model=CLAUDE, max_tokens=32, messages=messages).id
        assert by_bearer.messages.create(model=CLAUDE, max_tokens=32, messages=messages).id
    with (
        claude(gateway, "sk-gw-wrong") as wrong,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        wrong.messages.create(model=CLAUDE, max_tokens=32, messages=messages)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert "x-api-key: <key>" in caught.value.message
    assert caught.value.response.headers["www-authenticate"] == "Bearer"
    with oai(gateway, key) as good, oai(gateway, "sk-gw-wrong") as bad:
        assert good.responses.create(model="deepseek-flash", input="hi").status == "completed"
        with pytest.raises(openai.AuthenticationError) as refused:
            bad.responses.create(model="deepseek-flash", input="hi")
    assert refused.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert refused.value.response.headers["www-authenticate"] == "Bearer"
    with gateway.client() as anon:  # x-api-key is the Anthropic format's, not Responses'
        response = anon.post("/v1/responses", json={"model": "deepseek-flash", "input": "hi"},
                             headers={"x-api-key": key})  # fmt: skip
        assert response.status_code == 401


def test_rate_and_token_limits(gateway_factory: Callable[..., GatewayServer]) -> None:
    gateway = gateway_factory(rate_limit=RateLimit(rate=0.001, burst=1))
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with claude(gateway) as sdk, oai(gateway) as osdk:
        sdk.messages.create(model=CLAUDE, max_tokens=16, messages=messages)
        with pytest.raises(anthropic.RateLimitError) as caught:
            sdk.messages.create(model=CLAUDE, max_tokens=16, messages=messages)
        assert int(caught.value.response.headers["retry-after"]) >= 1
        with pytest.raises(openai.RateLimitError):
            osdk.responses.create(model="deepseek-flash", input="hi")
    limited = gateway_factory(tokens_limit=RateLimit(rate=0.001, burst=100))
    long = "word " * 200  # ~300 tokens: more than the bucket holds
    with claude(limited) as sdk, oai(limited) as osdk:
        with pytest.raises(anthropic.RateLimitError, match="token rate limit"):
            sdk.messages.create(
                model=CLAUDE, max_tokens=16, messages=[{"role": "user", "content": long}]
            )
        with pytest.raises(openai.RateLimitError, match="token rate limit"):
            osdk.responses.create(model="deepseek-flash", instructions=long, input="hi")
        small = sdk.messages.create(model=CLAUDE, max_tokens=16, messages=messages)
        assert small.id


def test_metrics_by_route(
    gateway: GatewayServer, sdk: anthropic.Anthropic, osdk: openai.OpenAI
) -> None:
    sdk.messages.create(model=CLAUDE, max_tokens=16, messages=[{"role": "user", "content": "m"}])
    list(osdk.responses.create(model="deepseek-flash", input="m", stream=True))
    with gateway.client() as http:
        text = http.get("/metrics").text
    assert 'route="/anthropic/v1/messages",status="200"' in text
    assert 'route="/v1/responses",status="200"' in text
    assert 'dskit_gateway_answer_duration_seconds_count{endpoint="anthropic_messages"} 1.0' in text
    assert 'dskit_gateway_time_to_first_token_seconds_count{endpoint="responses"} 1.0' in text


class EchoingUpstream:
    """An upstream that answers every POST with an error quoting the key it was sent."""

    def __init__(self, status: int) -> None:
        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                auth = self.headers.get("Authorization", "")
                message = f"rejected {auth} (key {auth.removeprefix('Bearer ')})"
                body = orjson.dumps({"error": {"message": message, "type": "x", "param": "p"}})
                self.reply(status, body)

        self._server = LocalHTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}"

    def close(self) -> None:
        self._server.close()


@pytest.mark.parametrize("status", [400, 401, 500])
def test_upstream_key_is_never_sent_or_logged(
    gateway_factory: Callable[..., GatewayServer], caplog: pytest.LogCaptureFixture, status: int
) -> None:
    secret = "upstream-secret-NOT-sk-shaped-4f9c1e"
    upstream = EchoingUpstream(status)
    try:
        gateway = gateway_factory(upstream=upstream.url, api_key=secret)
        caplog.set_level(logging.DEBUG)
        with gateway.client() as http:
            answers = [
                http.post("/anthropic/v1/messages", json={"model": CLAUDE, "max_tokens": 8,
                          "messages": [{"role": "user", "content": "x"}]}),
                http.post("/v1/responses", json={"model": "deepseek-flash", "input": "x"}),
                http.post("/responses", json={"model": "deepseek-flash", "stream": True,
                          "input": "x"}),
            ]  # fmt: skip
    finally:
        upstream.close()
    for answer in answers:
        assert answer.status_code == (502 if status == 401 else status)
        assert secret not in answer.text and secret[:12] not in answer.text
        assert "rejected" in answer.text  # the upstream's message, scrubbed
        assert secret not in str(answer.headers)
    assert answers[1].json()["error"]["param"] == ("p" if status != 401 else None)
    assert caplog.records and secret not in caplog.text


def test_upstream_key_not_in_answers_or_logs_with_the_simulator(
    gateway: GatewayServer, sdk: anthropic.Anthropic, osdk: openai.OpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    message = sdk.messages.create(
        model=CLAUDE, max_tokens=16, messages=[{"role": "user", "content": "k"}]
    )
    response = osdk.responses.create(model="deepseek-flash", input="k")
    assert UPSTREAM_KEY not in message.model_dump_json() + response.model_dump_json()
    assert UPSTREAM_KEY not in caplog.text and UPSTREAM_KEY[3:] not in caplog.text


# ---- Responses ------------------------------------------------------------------------


def test_responses_whole_and_streamed(osdk: openai.OpenAI, gateway: GatewayServer) -> None:
    whole = osdk.responses.create(model="deepseek-flash", input="stream vs whole")
    assert whole.object == "response" and whole.status == "completed" and whole.output_text
    events = list(osdk.responses.create(model="deepseek-flash", input="stream vs whole",
                                        stream=True))  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        whole.output_text
    )
    assert events[-1].type == "response.completed"
    usage = events[-1].response.usage  # the same prompt again: it hits the context cache
    assert (usage.input_tokens, usage.output_tokens) == (
        whole.usage.input_tokens,
        whole.usage.output_tokens,
    )
    with gateway.client() as http:  # the root path as DeepSeek has it
        root = http.post("/responses", json={"model": "deepseek-flash", "input": "stream vs whole"})
    assert root.status_code == 200
    assert root.json()["output"][-1]["content"][0]["text"] == whole.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_responses_tool_loop_in_thinking_mode(osdk: openai.OpenAI, stream: bool) -> None:
    def ask(items: Any) -> Any:
        params: dict[str, Any] = {
            "model": "deepseek-flash",
            "input": items,
            "tools": [WEATHER_RESPONSES],
            "reasoning": {"effort": "high"},
        }
        if not stream:
            return osdk.responses.create(**params)
        events = list(osdk.responses.create(**params, stream=True))
        assert events[-1].type == "response.completed"
        return events[-1].response

    question = {"role": "user", "content": "Please call get_weather for Lisbon for 3 days"}
    first = ask([question])
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert orjson.loads(call.arguments) == {"city": "Lisbon", "days": 3}
    history = [
        question,
        *[o.model_dump(exclude_none=True) for o in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    second = ask(history)
    assert second.status == "completed" and second.output[0].type == "reasoning"
    assert "get_weather returned: sunny, 21 C" in second.output_text
    without_reasoning = [history[0], *history[2:]]
    with pytest.raises(openai.BadRequestError):
        ask(without_reasoning)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("400", openai.BadRequestError),
        ("429", openai.RateLimitError),
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
    ],
)
def test_responses_upstream_errors_keep_status(
    osdk: openai.OpenAI, status: str, kind: type[openai.APIStatusError]
) -> None:
    for stream in (False, True):
        with pytest.raises(kind) as caught:
            osdk.responses.create(
                model="deepseek-flash", input="x", stream=stream,
                extra_headers={"X-Sim-Status": status},
            )  # fmt: skip
        assert caught.value.status_code == int(status)
        assert isinstance(caught.value.body, dict) and caught.value.body["message"]


def test_responses_bad_request_keeps_message_and_param(osdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        osdk.responses.create(model="deepseek-flash", input="x", temperature=7)
    assert "temperature" in caught.value.message


def test_responses_broken_stream_is_an_error_event(osdk: openai.OpenAI) -> None:
    stream = osdk.responses.create(
        model="deepseek-flash", input="x", stream=True,
        extra_headers={"X-Sim-Drop-After-Events": "4"},
    )  # fmt: skip
    with pytest.raises(openai.APIError, match="upstream"):
        list(stream)


def test_openapi_documents_the_formats(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        paths = http.get("/openapi.json").json()["paths"]
    for path in ("/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens",
                 "/v1/responses", "/responses"):  # fmt: skip
        post = paths[path]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert "model" in schema["properties"], path
        assert post["responses"]["200"]["description"], path
        assert "401" in post["responses"], path
    messages = paths["/anthropic/v1/messages"]["post"]
    assert (
        "max_tokens" in messages["requestBody"]["content"]["application/json"]["schema"]["required"]
    )
    assert "text/event-stream" in messages["responses"]["200"]["content"]
    assert messages["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AnthropicErrorResponse"
    )


def test_docs_examples_run(gateway: GatewayServer, capsys: pytest.CaptureFixture[str]) -> None:
    text = (Path(__file__).parents[2] / "docs" / "gateway.md").read_text()
    section = text.split("## Other formats")[1].split("\n## ")[0]
    blocks = [b.split("```")[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    for block in blocks:
        code = block.replace("http://127.0.0.1:8000", gateway.url).replace("sk-gw-...", "x")
        exec(compile(code, "docs/gateway.md", "exec"), {})
        assert len(capsys.readouterr().out.strip()) > 10
