"""Bad input gets a clear 4xx, never a 500: hand-picked cases, then schemathesis (OpenAPI)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from dskit.gateway import GatewaySettings
from tests.gateway.conftest import GatewayServer

CHAT = {
    "model": "deepseek-flash",
    "thinking": {"type": "disabled"},
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "deepseek-flash", "thinking": {"type": "disabled"}}, 422, "messages"),
        ({**CHAT, "temperature": 5}, 422, "temperature"),
        ({**CHAT, "temperature": False}, 422, "temperature"),  # not coerced to 0
        ({**CHAT, "max_tokens": "100"}, 422, "max_tokens"),
        ({**CHAT, "messages": []}, 422, "messages"),
        ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
        ({**CHAT, "messages": [{"role": "user", "content": ""}]}, 400, "messages[0].content"),
        ({**CHAT, "stop": ["x"] * 17}, 400, "stop"),
        ({**CHAT, "seed": 2**70}, 400, None),
        ({**CHAT, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400,
         "tool_choice"),
    ],
)  # fmt: skip
def test_bad_chat_requests_are_clear_4xx(
    gateway: GatewayServer, body: dict[str, Any], status: int, param: str
) -> None:
    with gateway.client() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_malformed_json_and_wrong_types(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        broken = http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
        listed = http.post("/v1/sessions", json=[1, 2])
        assert listed.status_code == 422
        unknown = http.post("/v1/sessions", json={"sistem": "typo"})
        assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "sistem"
        assert http.get("/v1/sessions", params={"limit": 0}).status_code == 422
        assert http.get("/v1/sessions/..%2F..%2Fetc").status_code in (404, 422)
        assert http.get("/no/such/route").json()["error"]["message"] == "Not Found"
        assert http.put("/v1/sessions").status_code == 405


def test_body_size_limit(gateway_factory: Any) -> None:
    gateway = gateway_factory(max_body_bytes=4096)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    with gateway.client() as http:
        declared = http.post("/v1/chat/completions", json=big)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "body_too_large"

        def chunks() -> Iterator[bytes]:
            yield b'{"model": "deepseek-flash", "thinking": {"type": "disabled"}, '
            yield b'"messages": [{"role": "user", "content": "'
            yield b"x" * 10_000
            yield b'"}]}'

        streamed = http.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413


def test_bad_last_event_id_is_400(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        response = http.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "garbage"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "Last-Event-ID"
        idle = http.get(f"/v1/sessions/{sid}/stream")
        assert idle.status_code == 404


def test_openapi_documents_every_route(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        schema = http.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/chat/completions", "/v1/models", "/v1/sessions", "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/messages", "/v1/sessions/{session_id}/cancel",
        "/v1/sessions/{session_id}/answers/{answer_id}/events", "/healthz", "/readyz",
        "/metrics",
    ):  # fmt: skip
        assert path in paths, path
    post = paths["/v1/chat/completions"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )


@pytest.fixture(scope="module")
def fuzz_target(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server = GatewayServer(
        GatewaySettings(
            upstream=sim.base_url,
            api_key="sk-upstream-fuzz-000000",
            store="memory",
            keys_path=str(tmp / "keys.sqlite3"),
            heartbeat_seconds=0.2,
            max_wait_seconds=0.2,
        )
    ).start()
    yield server
    server.stop()


def test_no_request_gets_a_5xx(fuzz_target: GatewayServer) -> None:
    """Every operation, 25 generated requests each (valid and invalid), none answered 5xx."""
    api = schemathesis.openapi.from_url(f"{fuzz_target.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(base_url=fuzz_target.url, checks=[not_a_server_error])

        check()
