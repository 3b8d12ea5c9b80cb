"""SimServer's lifecycle and the `dskit sim` command."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner

from dskit.cli._sim import sim as sim_command
from dskit.sim import SimConfig, SimServer
from tests.conftest import wait_until
from tests.sim.sim_helpers import AUTH, chat_body


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_start_stop_leaves_nothing_behind() -> None:
    SimServer().start().stop()  # the event-loop library opens a few fds once per process
    threads, fds = threading.active_count(), open_fds()
    for _ in range(3):
        server = SimServer(SimConfig(), port=0)
        server.start()
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        with httpx2.Client(base_url=server.base_url, headers=AUTH) as http:
            assert http.post("/chat/completions", json=chat_body()).status_code == 200
        server.stop()
        server.stop()  # idempotent
    assert threading.active_count() == threads
    assert open_fds() <= fds
    with pytest.raises(RuntimeError):
        _ = SimServer().port


def test_stop_is_prompt_with_streams_in_flight() -> None:
    server = SimServer(SimConfig(token_ms=1000)).start()
    http = httpx2.Client(base_url=server.base_url, headers=AUTH, timeout=20)
    context = http.stream("POST", "/chat/completions", json=chat_body(stream=True))
    response = context.__enter__()
    chunks = response.iter_raw()
    next(chunks)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(httpx2.RemoteProtocolError):
        for _ in chunks:
            pass
    context.__exit__(None, None, None)
    http.close()


def test_port_is_known_and_busy_port_fails() -> None:
    with SimServer() as first:
        assert first.port > 0
        assert repr(first) == f"<SimServer {first.base_url}>"
        with pytest.raises(OSError):
            SimServer(port=first.port).start()


def test_stats_and_reset(sim_factory: Any) -> None:
    server = sim_factory()
    with httpx2.Client(base_url=server.base_url, headers=AUTH) as http:
        http.get("/models")
        http.post("/chat/completions", json=chat_body(stream=True))
        http.get("/missing")
    stats = server.stats
    assert stats.requests == 3 and stats["requests"] == 3
    assert stats.by_path == {"/models": 1, "/chat/completions": 1, "/missing": 1}
    assert stats.by_status == {200: 2, 404: 1}
    assert stats.streams == 1
    server.reset_stats()
    assert server.stats.requests == 0 and server.stats.by_path == {}


def test_keys_stay_out_of_reprs() -> None:
    config = SimConfig(api_keys=("sk-secret-key-5678",))
    assert "sk-secret" not in repr(config)
    assert "sk-secret" not in repr(SimServer(config))


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        SimConfig(faults=("explode",))
    with pytest.raises(ValueError):
        SimConfig(fault_rate=2)
    with pytest.raises(ValueError):
        SimConfig(max_concurrency=0)


def test_cli_help_has_examples() -> None:
    result = CliRunner().invoke(sim_command, ["--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--fault" in result.output
    bad = CliRunner().invoke(sim_command, ["--fault", "explode"])
    assert bad.exit_code == 2 and "explode" in bad.output


def test_cli_serves_in_the_foreground() -> None:
    code = "from dskit.cli import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "sim", "--api-key", "sk-cli-1234"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        good = {"Authorization": "Bearer sk-cli-1234"}
        response = httpx2.post(f"{url}/chat/completions", json=chat_body(), headers=good)
        assert response.status_code == 200
        assert (
            httpx2.post(f"{url}/chat/completions", json=chat_body(), headers=AUTH).status_code
            == 401
        )
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_disconnect_frees_the_stream(sim_factory: Any) -> None:
    server = sim_factory(token_ms=200)
    with httpx2.Client(base_url=server.base_url, headers=AUTH) as http:
        with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
            chunks = response.iter_raw()
            next(chunks)
            assert server.app.active == 1
        wait_until(lambda: server.app.active == 0, timeout=5)


@pytest.mark.parametrize(
    ("path", "body", "lead"),
    [
        ("/chat/completions", chat_body(stream=True), 2),  # the role and the first piece
        (
            "/beta/completions",
            {
                "model": "deepseek-flash",
                "thinking": {"type": "disabled"},
                "prompt": "def f(",
                "stream": True,
            },
            1,
        ),
    ],
)
def test_the_first_token_carries_only_what_belongs_to_it(
    sim_factory: Any, path: str, body: dict[str, Any], lead: int
) -> None:
    """With a token delay, the first write holds the role (chat only) and one piece; the
    next piece comes a token later (FIM has no role event, so it leads with one piece)."""
    server = sim_factory(token_ms=300)
    with httpx2.Client(base_url=server.base_url, headers=AUTH, timeout=20) as http:
        with http.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            first = next(response.iter_raw())
    assert first.count(b"data: ") == lead
