"""The offline DeepSeek simulator: same wire format, deterministic text, injectable faults.

    from dskit.sim import SimServer, SimConfig
    with SimServer(SimConfig(token_ms=2)) as sim:
        sim.base_url      # "http://127.0.0.1:PORT"; API at /chat/completions and /v1/...
        sim.stats         # requests, by_path, faults_injected, prefix_requests, ...

`SimApp` is the raw ASGI application, for embedding (for example as the gateway's default
upstream). Per-request behaviour is driven by `X-Sim-*` headers: see docs/simulator.md.
"""

from dskit.sim._app import SimApp, SimStats
from dskit.sim._config import FAULT_KINDS, SimConfig
from dskit.sim._server import SimServer

__all__ = ["FAULT_KINDS", "SimApp", "SimConfig", "SimServer", "SimStats"]
