"""Operations: metrics, health, logs (JSON, request ids, keys redacted), `dskit serve` itself."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from dskit.gateway._logging import JsonFormatter, RequestIdFilter
from tests.conftest import free_port, logged_port, wait_until
from tests.gateway.conftest import GatewayServer

CHAT = {
    "model": "deepseek-flash",
    "thinking": {"type": "disabled"},
    "messages": [{"role": "user", "content": "hi"}],
}


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in metrics")


def test_metrics_count_requests_tokens_latency_and_errors(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        for _ in range(2):
            http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        http.post("/v1/chat/completions", json={"model": "x"})
        text = http.get("/metrics").text
    assert (
        _metric(
            text,
            'dskit_gateway_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        )
        == 2
    )
    assert (
        _metric(
            text,
            'dskit_gateway_requests_total{method="POST",route="/v1/chat/completions",status="422"}',
        )
        == 1
    )
    assert _metric(text, 'dskit_gateway_tokens_total{kind="completion"}') > 0
    assert (
        _metric(
            text, 'dskit_gateway_time_to_first_token_seconds_count{endpoint="chat_completions"}'
        )
        == 2
    )
    assert (
        _metric(text, 'dskit_gateway_answer_duration_seconds_count{endpoint="chat_completions"}')
        == 2
    )
    assert _metric(text, 'dskit_gateway_errors_total{kind="validation"}') == 1
    assert _metric(text, "dskit_gateway_active_streams") == 0


def test_health_and_readiness(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["upstream"] == "custom"
        assert ready.headers["x-request-id"]
        echoed = http.get("/healthz", headers={"X-Request-ID": "req-123"})
        assert echoed.headers["x-request-id"] == "req-123"


def test_json_logs_carry_request_ids_and_never_keys(
    gateway: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    handler = logging.Handler()
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("dskit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with gateway.client() as http:
            http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "trace-42"})
            http.post(
                "/v1/chat/completions", json=CHAT,
                headers={"X-Sim-Status": "401", "X-Request-ID": "trace-43"},
            )  # fmt: skip
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [orjson.loads(r) for r in records]
    access = [x for x in lines if x["logger"] == "dskit.gateway.access"]
    assert {x["request_id"] for x in access} >= {"trace-42", "trace-43"}
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    assert not any("sk-test-upstream-0123456789" in r for r in records)


def test_dskit_serve_runs_the_simulator_and_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "DSKIT_HOME": str(tmp_path)}
    env.pop("DEEPSEEK_API_KEY", None)
    env.pop("DEEPSEEK_BASE_URL", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dskit"), "serve", "--port", "0",
             "--log-format", "json"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{wait_until(lambda: logged_port(log), timeout=30)}"

        def ready() -> Any:
            try:
                return httpx2.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_until(ready, timeout=30, interval=0.1)
        info = httpx2.get(f"{url}/v1/gateway").json()
        reply = httpx2.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        page = httpx2.get(url).text
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert info["upstream"] == "simulator" and reply.status_code == 200
    assert "simulator-banner" in page
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("OFFLINE SIMULATOR" in x["message"] and x["level"] == "warning" for x in lines)


def _serve(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DSKIT_HOME": str(tmp_path), "DSKIT_CONFIG": str(tmp_path / "c.toml")}
    for name in ("DEEPSEEK_API_KEY", "DEEPSEEK_BASE_URL", "DSKIT_GATEWAY_REDIS"):
        env.pop(name, None)
    command = [str(Path(sys.executable).parent / "dskit"), "serve", *args]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def test_serve_on_port_0_says_where_it_listens_and_what_it_uses(tmp_path: Path) -> None:
    seen: list[str] = []
    with _serve(tmp_path, "--port", "0") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # the process's own log, read as it comes
            seen.append(line)
            found = re.search(r"running on (http://127\.0\.0\.1:(\d+))", line)
            if found:
                break
        assert found is not None and found.group(2) != "0", "".join(seen)
        ok = httpx2.get(found.group(1) + "/healthz", timeout=5).status_code == 200
        proc.terminate()
        proc.wait(timeout=15)
    assert ok
    said = "".join(seen)
    assert "OFFLINE SIMULATOR" in said and "sessions: SQLiteStore(" in said
    assert "auth: off" in said


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--store", "{tmp}"], 1, "is a directory"),
        (["--fallback", "bogus"], 2, "a fallback is http(s)://URL, model:NAME"),
        (["--redis", "redis://127.0.0.1:{dead}/0"], 1, "cannot reach Redis at"),
    ],
)
def test_serve_refuses_what_cannot_work_in_one_line(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    filled = [a.format(tmp=tmp_path, dead=free_port()) for a in args]
    proc = _serve(tmp_path, "--port", "0", *filled)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("Error:")


def test_alert_rules_parse_and_use_exported_metrics(gateway: GatewayServer) -> None:
    import re

    import yaml

    rules = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"DskitGatewayErrorRatioHigh", "DskitGatewayTimeToFirstTokenP99High"} <= set(alerts)
    assert "> 0.05" in alerts["DskitGatewayErrorRatioHigh"]["expr"]
    assert alerts["DskitGatewayErrorRatioHigh"]["for"] == "5m"
    assert "0.99" in alerts["DskitGatewayTimeToFirstTokenP99High"]["expr"]
    with gateway.client() as http:
        http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        exported = http.get("/metrics").text
    used = {m for r in alerts.values() for m in re.findall(r"dskit_gateway_\w+", r["expr"])}
    assert used and all(f"\n{name}" in exported for name in used), used


def test_settings_from_env_coerce_types_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from dskit.gateway import GatewaySettings

    monkeypatch.setenv("DSKIT_GATEWAY_PORT", "9001")
    monkeypatch.setenv("DSKIT_GATEWAY_ALLOW_INSECURE_BIND", "yes")
    monkeypatch.setenv("DSKIT_GATEWAY_HEARTBEAT_SECONDS", "2.5")
    monkeypatch.setenv("DSKIT_GATEWAY_LOG_FORMAT", "json")
    monkeypatch.setenv("DSKIT_GATEWAY_RATE_LIMIT", "5")  # not settable from the environment
    settings = GatewaySettings.from_env(log_format="text", upstream=None)
    assert (settings.port, settings.allow_insecure_bind) == (9001, True)
    assert settings.heartbeat_seconds == 2.5 and settings.rate_limit is None
    assert settings.log_format == "text"  # the flag wins over the environment


class BrokenLimiter:
    """A rate limiter with a bug in it: what an unexpected exception looks like."""

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        raise RuntimeError("limiter bug")


def test_unexpected_errors_are_500s_logged_with_their_traceback(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dskit.gateway import GatewaySettings

    settings = GatewaySettings(
        upstream=sim.base_url, api_key="sk-upstream-000000", store="memory",
        keys_path=str(tmp_path / "keys.sqlite3"),
    )  # fmt: skip
    server = GatewayServer(settings, limiter=BrokenLimiter()).start()
    try:
        with caplog.at_level(logging.ERROR, logger="dskit.gateway"), server.client() as http:
            relayed = http.post("/v1/chat/completions", json=CHAT)  # the fast lane
            routed = http.post("/v1/sessions", json={})  # a FastAPI route
    finally:
        server.stop()
    for response in (relayed, routed):
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
    logged = {r.getMessage(): r for r in caplog.records if r.name == "dskit.gateway"}
    for path in ("/v1/chat/completions", "/v1/sessions"):
        record = logged[f"unexpected error on {path}"]
        assert record.exc_info is not None and "limiter bug" in str(record.exc_info[1])
