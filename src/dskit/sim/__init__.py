"""The offline DeepSeek simulator: same wire format, deterministic text, injectable faults.

    from dskit.sim import SimServer, SimConfig
    with SimServer(SimConfig(token_ms=2)) as sim:
        sim.base_url      # "http://127.0.0.1:PORT"; API at /chat/completions and /v1/...
        sim.stats         # requests, by_path, faults_injected, prefix_requests, ...

`SimApp` is the raw ASGI application, for embedding (for example as the gateway's default
upstream). Per-request behaviour is driven by `X-Sim-*` headers: see docs/simulator.md.
The server and app are imported on first use, so `dskit --help` loads no HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dskit.sim._config import FAULT_KINDS, SimConfig

if TYPE_CHECKING:
    from dskit.sim._app import SimApp, SimStats
    from dskit.sim._server import SimServer

_LAZY = {"SimApp": "dskit.sim._app", "SimStats": "dskit.sim._app", "SimServer": "dskit.sim._server"}

__all__ = ["FAULT_KINDS", "SimApp", "SimConfig", "SimServer", "SimStats"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dskit.sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
