"""The sync client against the simulator over loopback: results, events, errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from dskit import (
    AsyncDeepSeek,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    DeepSeek,
    InsufficientBalanceError,
    InternalServerError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    ValidationError,
)
from dskit.client import ContentDelta, Done, ReasoningDelta, ToolCallDelta, UsageEvent
from tests.conftest import LocalHTTPServer, QuietHandler

from .conftest import FIXED_JITTER, FakeClock, faults_once

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def test_missing_key_fails_at_construction_saying_how_to_set_it() -> None:
    with pytest.raises(ConfigError, match="DEEPSEEK_API_KEY"):
        DeepSeek()


def test_key_and_base_url_fall_back_to_environment(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-from-env-1234567")
    monkeypatch.setenv("DEEPSEEK_BASE_URL", sim.base_url)
    with DeepSeek() as client:
        assert client.base_url == sim.base_url
        assert client.chat("hi").content


def test_repr_never_shows_the_key(client: DeepSeek) -> None:
    assert "sk-test-key" not in repr(client)
    assert "***" in repr(client)


def test_chat_returns_a_whole_typed_result(client: DeepSeek) -> None:
    result = client.chat("Tell me about the sea", thinking=False)
    assert result.content.strip()
    assert result.finish_reason == "stop"
    assert result.reasoning_content is None
    assert result.usage is not None
    assert result.usage.completion_tokens > 0
    assert result.usage.prompt_tokens == (
        result.usage.prompt_cache_hit_tokens + result.usage.prompt_cache_miss_tokens
    )
    assert result.id and result.model == "deepseek-flash"
    assert result.to_message() == {"role": "assistant", "content": result.content}


def test_same_request_same_answer_and_stream_equals_chat(client: DeepSeek) -> None:
    messages = [{"role": "user", "content": "deterministic?"}]
    first = client.chat(messages)
    with client.stream(messages) as stream:
        events = list(stream)
    assert isinstance(events[-1], Done)
    assert events[-1].result.content == first.content
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == first.content
    assert sum(isinstance(e, UsageEvent) for e in events) == 1


def test_stream_final_drains_the_rest_and_snapshot_shows_partial(client: DeepSeek) -> None:
    with client.stream("a long story please") as stream:
        first = next(e for e in stream if isinstance(e, ContentDelta))
        assert stream.snapshot().content == first.text
        assert stream.snapshot().finish_reason is None
        result = stream.final()
    assert result.content.startswith(first.text)
    assert result.finish_reason == "stop"


def test_text_iterator_yields_only_text(client: DeepSeek) -> None:
    expected = client.chat("text only").content
    with client.stream("text only") as stream:
        assert "".join(stream.text()) == expected


def test_reasoner_streams_reasoning_first_and_never_null_text(client: DeepSeek) -> None:
    with client.stream("why is the sky blue", model="deepseek-flash", thinking=True) as stream:
        kinds = [e.type for e in stream if isinstance(e, ContentDelta | ReasoningDelta)]
        result = stream.final()
    assert kinds[0] == "reasoning"
    assert kinds.index("content") > 0
    assert "reasoning" not in kinds[kinds.index("content") :]
    assert result.reasoning_content and "null" not in result.content[:4]
    assert result.usage is not None and result.usage.reasoning_tokens > 0


def test_tool_calls_merge_by_index_with_id_only_first(client: DeepSeek) -> None:
    with client.stream(
        "What is the weather in Paris? use get_weather",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        thinking=False,
    ) as stream:
        deltas = [e for e in stream if isinstance(e, ToolCallDelta)]
        result = stream.final()
    assert deltas[0].id and deltas[0].name == "get_weather"
    assert all(d.id is None for d in deltas[1:] if d.index == deltas[0].index)
    assert result.finish_reason == "tool_calls"
    call = result.tool_calls[0]
    assert call.name == "get_weather" and call.id == deltas[0].id
    assert isinstance(json.loads(call.arguments)["city"], str)


def test_json_mode_gives_a_json_object(client: DeepSeek) -> None:
    result = client.chat("give me json", response_format={"type": "json_object"})
    assert isinstance(json.loads(result.content), dict)


def test_max_tokens_and_stop(client: DeepSeek) -> None:
    full = client.chat("count words")
    short = client.chat("count words", max_tokens=3, thinking=False)
    assert short.finish_reason == "length"
    assert full.content.startswith(short.content) and len(short.content) < len(full.content)
    word = full.content.split()[2]
    stopped = client.chat("count words", stop=[word])
    assert word not in stopped.content and full.content.startswith(stopped.content)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"thinking": "yes"}, "thinking"),
        ({"effort": "extreme"}, "effort"),
        ({"temprature": 0.5}, "temprature"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
        ({"max_tokens": 393217}, "max_tokens"),
    ],
)
def test_invalid_parameters_fail_before_the_network(
    client: DeepSeek, sim: Any, params: dict[str, Any], param: str
) -> None:
    before = sim.stats["requests"]
    with pytest.raises(ValidationError) as info:
        client.chat("hi", **params)
    assert info.value.param == param
    assert param in str(info.value)
    assert sim.stats["requests"] == before


def test_invalid_messages_fail_before_the_network(client: DeepSeek) -> None:
    with pytest.raises(ValidationError, match="role"):
        client.chat([{"role": "wizard", "content": "x"}])
    with pytest.raises(ValidationError, match="non-empty"):
        client.chat([])


def test_unknown_model_is_allowed_and_the_server_message_kept(client: DeepSeek) -> None:
    with pytest.raises(BadRequestError) as info:
        client.chat("hi", model="deepseek-v9-imaginary")
    assert info.value.status_code == 400
    assert info.value.message


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientBalanceError),
        (422, UnprocessableEntityError),
    ],
)
def test_client_errors_are_typed_and_never_retried(
    client: DeepSeek, clock: FakeClock, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        client.chat("hi", extra_headers={"X-Sim-Status": str(status)})
    assert getattr(info.value, "status_code", None) == status
    assert getattr(info.value, "message", "")
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, RateLimitError), (500, InternalServerError), (503, ServiceUnavailableError)],
)
def test_server_errors_retry_with_exponential_backoff_then_raise(
    client: DeepSeek, clock: FakeClock, sim: Any, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        client.chat("hi", extra_headers={"X-Sim-Status": str(status)})
    assert clock.sleeps == [1.0, 2.0, 4.0]  # jitter fixed at 1.0: base * 2**n


def test_backoff_is_capped_and_configurable_per_call(client: DeepSeek, clock: FakeClock) -> None:
    from dskit import RetryPolicy

    policy = RetryPolicy(max_retries=5, base_delay=2.0, max_delay=5.0, jitter=lambda: 1.0)
    with pytest.raises(ServiceUnavailableError):
        client.chat("hi", retry=policy, extra_headers={"X-Sim-Status": "503"})
    assert clock.sleeps == [2.0, 4.0, 5.0, 5.0, 5.0]


def test_full_jitter_draws_below_the_ceiling(sim: Any, clock: FakeClock) -> None:
    from dskit import RetryPolicy

    draws = iter([0.5, 0.25, 0.0])
    policy = RetryPolicy(jitter=lambda: next(draws))
    with DeepSeek("sk-x-123456", base_url=sim.base_url, clock=clock, retry=policy) as c:
        with pytest.raises(InternalServerError):
            c.chat("hi", extra_headers={"X-Sim-Status": "500"})
    assert clock.sleeps == [0.5, 0.5, 0.0]


def test_retry_after_headers_are_honoured(client: DeepSeek, clock: FakeClock) -> None:
    with pytest.raises(RateLimitError) as info:
        client.chat("hi", extra_headers={"X-Sim-Status": "429", "X-Sim-Retry-After": "7"})
    assert clock.sleeps == [7.0, 7.0, 7.0]
    assert info.value.retry_after == 7.0
    clock.sleeps.clear()
    with pytest.raises(RateLimitError):
        client.chat("hi", extra_headers={"X-Sim-Status": "429", "X-Sim-Retry-After-Ms": "250"})
    assert clock.sleeps == [0.25, 0.25, 0.25]


def test_a_retry_that_succeeds_returns_the_answer(client: DeepSeek, clock: FakeClock) -> None:
    expected = client.chat("retry me").content
    result = client.chat("retry me", extra_headers=faults_once(2, Status=503))
    assert result.content == expected
    assert clock.sleeps == [1.0, 2.0]


def test_retrying_events_are_emitted_before_output(client: DeepSeek) -> None:
    with client.stream("hi", extra_headers=faults_once(1, Status=500)) as stream:
        events = list(stream)
    assert events[0].type == "retrying"
    assert events[-1].type == "done"


def test_non_json_error_bodies_keep_the_server_text(client: DeepSeek) -> None:
    headers = {"X-Sim-Status": "400", "X-Sim-Error-Body": "upstream said no"}
    with pytest.raises(BadRequestError, match="upstream said no"):
        client.chat("hi", extra_headers=headers)


def test_total_deadline_stops_retrying(sim: Any, clock: FakeClock) -> None:
    from dskit import APITimeoutError, Timeout

    with DeepSeek(
        "sk-x-123456",
        base_url=sim.base_url,
        clock=clock,
        timeout=Timeout(total=2.5),
        retry=FIXED_JITTER,
    ) as c:
        with pytest.raises(APITimeoutError, match="Total timeout"):
            c.chat("hi", extra_headers={"X-Sim-Status": "503"})
    assert clock.sleeps == [1.0]  # the next delay (2 s) would pass the 2.5 s deadline


def test_auth_error_never_leaks_the_key(sim_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = sim_factory(api_keys=("sk-the-right-key-123",))
    caplog.set_level(logging.DEBUG)
    secret = "sk-wrong-but-secret-key-9876"
    with DeepSeek(secret, base_url=server.base_url) as c:
        with pytest.raises(AuthenticationError) as info:
            c.chat("hi")
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert secret not in caplog.text


class QuotingServer(QuietHandler):
    """Refuses every request with a 400 whose message quotes the key it was sent."""

    def do_GET(self) -> None:
        key = self.headers["Authorization"].removeprefix("Bearer ")
        error = {"message": f"key {key} is not valid here", "type": "invalid_request_error"}
        self.reply(400, json.dumps({"error": error}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.do_GET()


async def test_an_error_body_that_quotes_the_key_is_redacted_whatever_its_shape() -> None:
    server = LocalHTTPServer(QuotingServer)
    secret = "live-abc123secretXYZ-client"  # not sk- shaped: only its value can find it
    url = f"http://127.0.0.1:{server.port}"
    try:
        with DeepSeek(secret, base_url=url) as client:
            with pytest.raises(BadRequestError) as streamed:
                client.chat("hi")
            with pytest.raises(BadRequestError) as called:
                client.models()
        async with AsyncDeepSeek(secret, base_url=url) as aclient:
            with pytest.raises(BadRequestError) as async_streamed:
                await aclient.chat("hi")
    finally:
        server.close()
    for error in (streamed.value, called.value, async_streamed.value):
        assert "is not valid here" in str(error) and "key *** is" in str(error)
        assert secret not in str(error) and secret not in repr(error)


def test_models_balance_and_fim(client: DeepSeek) -> None:
    assert [m.id for m in client.models()] == ["deepseek-flash", "deepseek-v4-pro"]
    balance = client.balance()
    assert balance.is_available and balance.balance_infos[0].currency
    fim = client.fim("def add(a, b):\n", suffix="\n    return c\n", max_tokens=20)
    assert fim.text and fim.finish_reason in ("stop", "length")
    assert fim.text == client.fim("def add(a, b):\n", suffix="\n    return c\n", max_tokens=20).text


def test_values_json_cannot_carry_fail_before_the_network(client: DeepSeek, sim: Any) -> None:
    before = sim.stats["requests"]
    with pytest.raises(ValidationError, match="JSON"):
        client.chat("hi", extra_body={"seed": 2**70})
    with pytest.raises(ValidationError, match="max_tokens"):
        client.fim("x", max_tokens=2**70)
    assert sim.stats["requests"] == before


@pytest.mark.parametrize(
    ("prompt", "params", "param"),
    [
        (None, {}, "prompt"),
        ("x", {"temperature": 2.5}, "temperature"),
        ("x", {"stop": ["s"] * 17}, "stop"),
        ("x", {"max_tokens": 0}, "max_tokens"),
    ],
)
def test_invalid_fim_requests_fail_before_the_network(
    client: DeepSeek, sim: Any, prompt: Any, params: dict[str, Any], param: str
) -> None:
    before = sim.stats["requests"]
    with pytest.raises(ValidationError) as info:
        client.fim(prompt, **params)
    assert info.value.param == param
    assert sim.stats["requests"] == before


def test_a_misspelt_parameter_names_the_right_one(client: DeepSeek) -> None:
    with pytest.raises(ValidationError, match="did you mean 'temperature'"):
        client.chat("hi", temprature=0.5)  # type: ignore[call-arg]


def test_forced_tool_choice_in_thinking_mode_says_how_to_fix_it(client: DeepSeek) -> None:
    with pytest.raises(ValidationError) as info:
        client.chat("hi", tools=[WEATHER_TOOL], tool_choice="required")
    assert info.value.message == "Thinking mode does not support this tool_choice"
    assert "thinking=False" in info.value.hint and "thinking=False" in str(info.value)


def test_thinking_and_effort_arguments_reach_the_wire(client: DeepSeek) -> None:
    plain = client.chat("Tell me about the sea", thinking=False)
    assert plain.reasoning_content is None and plain.content
    low = client.chat("Tell me about the sea", effort="low")
    high = client.chat("Tell me about the sea", effort="max")
    assert low.reasoning_content and high.reasoning_content
    assert len(low.reasoning_content.split()) < len(high.reasoning_content.split())


def test_retired_model_names_are_migrated_and_said_once(
    client: DeepSeek, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="dskit.client")
    first = client.chat("hi", model="deepseek-chat")
    client.chat("hi", model="deepseek-chat")
    assert first.model == "deepseek-flash" and first.reasoning_content is None
    reasoner = client.chat("hi", model="deepseek-reasoner")
    assert reasoner.model == "deepseek-flash" and reasoner.reasoning_content
    said = [r.getMessage() for r in caplog.records if "retired" in r.getMessage()]
    assert len([m for m in said if "deepseek-chat" in m]) <= 1
