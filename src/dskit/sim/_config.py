"""The simulator's configuration: one frozen object instead of loose keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from dskit._models import KNOWN_MODELS, MAX_OUTPUT_TOKENS
from dskit.sim._pack import PACK_FAULTS

# the names the API accepts (current and legacy flash names); retired ones get 400
DEFAULT_MODELS = tuple(KNOWN_MODELS)

# Fault kinds that `fault_rate` draws from (also the `--fault` choices of `dskit sim`).
FAULT_KINDS = (
    "rate_limit",  # 429 with DeepSeek's body
    "server_error",  # 500
    "overloaded",  # 503
    "drop",  # the connection breaks after a few events (or bytes)
    "end_early",  # the stream ends cleanly after a few events, no finish chunk, no [DONE]
    "no_done",  # the whole answer but no `data: [DONE]`
    "stall",  # silence for a while in the middle of a stream
    "malformed",  # one event carries broken JSON
    "insufficient",  # finish_reason insufficient_system_resource after a few events
    "aborted",  # finish_reason aborted after a few events
    "queue",  # held in the queue with keep-alives before inference
)

FIM_MAX_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How a simulator behaves; every field has a default that suits tests.

    `api_keys` empty means any non-empty key is accepted. `fault_rate` is the share of
    chat requests (without their own X-Sim-* fault headers) that get a fault drawn from
    `faults` (all of FAULT_KINDS when empty), using a RNG seeded by `seed` so a soak test
    sees the same faults in the same order every run.
    """

    api_keys: tuple[str, ...] = field(default=(), repr=False)  # keys never show in reprs
    models: tuple[str, ...] = DEFAULT_MODELS
    ttft_ms: float = 0
    token_ms: float = 0
    seed: int = 0
    fault_rate: float = 0
    faults: tuple[str, ...] = ()
    max_concurrency: int | None = None
    cache_blocks: int = 100_000
    max_body_bytes: int = 16 * 1024 * 1024
    keepalive_interval_ms: float = 100
    # DeepSeek's docs do not say whether a prefix in thinking mode may carry the reasoning
    # so far; the simulator takes the strict reading (400) unless this is set
    reasoning_prefix: bool = False
    # how every packed reply misbehaves (`PACK_FAULTS`) unless X-Sim-Pack-Fault says
    pack_fault: str | None = None

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.faults if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError("fault_rate must be between 0 and 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1 (or None for no cap)")
        for name in ("ttft_ms", "token_ms", "keepalive_interval_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.keepalive_interval_ms == 0:
            raise ValueError("keepalive_interval_ms must be positive")
        if self.pack_fault is not None and self.pack_fault not in PACK_FAULTS:
            known = ", ".join(PACK_FAULTS)
            raise ValueError(f"unknown pack_fault {self.pack_fault!r}; known: {known}")
        if self.cache_blocks < 0 or self.max_body_bytes < 1:
            raise ValueError("cache_blocks must be >= 0 and max_body_bytes >= 1")

    @property
    def fault_pool(self) -> tuple[str, ...]:
        return self.faults or FAULT_KINDS

    def max_tokens_limit(self, model: str) -> int:
        """The largest max_tokens a model accepts (reasoning counts inside it)."""
        known = KNOWN_MODELS.get(model)
        return known.max_output_tokens if known else MAX_OUTPUT_TOKENS
