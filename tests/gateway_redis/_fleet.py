"""Gateway processes (`dskit serve` subprocesses) sharing one Redis, and an SSE reader.

Each instance is a real process on a free port so a test can SIGKILL it mid-answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
import orjson

from tests.conftest import GatewayProcess


def start_fleet(
    count: int, redis_url: str, namespace: str, upstream: str, tmp: Path, *extra: str,
    env: Mapping[str, str] | None = None,
) -> list[GatewayProcess]:  # fmt: skip
    """`count` instances on one Redis, launched in parallel, all ready."""
    args = ["--redis", redis_url, "--store", redis_url, "--upstream", upstream,
            "--keys-db", str(tmp / "keys.sqlite3"), *extra]  # fmt: skip
    base_env = {
        "DSKIT_GATEWAY_REDIS_NAMESPACE": namespace, "DSKIT_GATEWAY_LEASE_SECONDS": "1",
        "DSKIT_GATEWAY_TAKEOVER_INTERVAL": "0.2", "DSKIT_GATEWAY_HEARTBEAT_SECONDS": "0.5",
        "DSKIT_HOME": str(tmp),
        # the simulator runs apart, and the tests pace it and inject its faults
        "DSKIT_GATEWAY_FORWARD_SIM_HEADERS": "true", **(env or {}),
    }  # fmt: skip
    fleet = [GatewayProcess(f"gw{i}", args, base_env, tmp) for i in range(count)]
    for gateway in fleet:
        gateway.launch()
    for gateway in fleet:
        gateway.wait_ready()
    return fleet


def sse_events(response: httpx2.Response) -> Iterator[dict[str, Any]]:
    """Events of a streamed SSE response as they arrive: id, event and parsed data."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield {"id": fields.get("id"), "event": fields.get("event", "message"),
                       "data": orjson.loads(fields["data"])}  # fmt: skip
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
