"""Per-request controls (`X-Sim-*` headers) and randomly drawn faults.

Headers are parsed into one `Controls` object; a bad value is the client's mistake and
gets a clear 400, never a crash. `X-Sim-Fault-Key`/`X-Sim-Fault-Times` limit a request's
fault headers to the first n requests with that key, so a test can break a stream once
and watch the client's retry or resume succeed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from dskit.sim._config import SimConfig
from dskit.sim._pack import PACK_FAULTS


class ControlError(ValueError):
    """An X-Sim-* header has a value the simulator cannot use."""


@dataclass(frozen=True, slots=True)
class Controls:
    """Latency and faults for one request; None/False means "not asked for"."""

    ttft_ms: float | None = None
    token_ms: float | None = None
    keepalive_ms: float | None = None
    # faults (subject to X-Sim-Fault-Key / X-Sim-Fault-Times)
    status: int | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    error_body: str | None = None
    drop_after_events: int | None = None
    drop_after_bytes: int | None = None
    end_after_events: int | None = None
    no_done: bool = False
    stall_ms: float | None = None
    stall_after_events: int | None = None
    malformed_at: int | None = None
    insufficient_after_events: int | None = None
    aborted_after_events: int | None = None
    queue_ms: float | None = None
    pack_fault: str | None = None  # how a packed reply misbehaves (`_pack.PACK_FAULTS`)

    @property
    def has_fault(self) -> bool:
        return any(getattr(self, name) not in (None, False) for name in _FAULT_FIELDS)

    def without_faults(self) -> Controls:
        return Controls(self.ttft_ms, self.token_ms, self.keepalive_ms)


_LATENCY_FIELDS = ("ttft_ms", "token_ms", "keepalive_ms")
# every other field is a fault; named once here rather than by position on each request
_FAULT_FIELDS = tuple(f.name for f in fields(Controls) if f.name not in _LATENCY_FIELDS)


_INTS = {
    "status": "x-sim-status",
    "drop_after_events": "x-sim-drop-after-events",
    "drop_after_bytes": "x-sim-drop-after-bytes",
    "end_after_events": "x-sim-end-after-events",
    "stall_after_events": "x-sim-stall-after-events",
    "malformed_at": "x-sim-malformed-at",
    "insufficient_after_events": "x-sim-insufficient-after-events",
    "aborted_after_events": "x-sim-aborted-after-events",
}
_MILLIS = {
    "ttft_ms": "x-sim-ttft-ms",
    "token_ms": "x-sim-token-ms",
    "keepalive_ms": "x-sim-keepalive-ms",
    "stall_ms": "x-sim-stall-ms",
    "queue_ms": "x-sim-queue-ms",
}
_TEXTS = {
    "retry_after": "x-sim-retry-after",
    "retry_after_ms": "x-sim-retry-after-ms",
    "error_body": "x-sim-error-body",
}
MAX_MS = 3_600_000.0


def _int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ControlError(f"Invalid {name} header: {value!r} is not an integer") from None
    if number < 0:
        raise ControlError(f"Invalid {name} header: it must not be negative")
    return number


def _millis(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ControlError(f"Invalid {name} header: {value!r} is not a number") from None
    if not 0 <= number <= MAX_MS:
        raise ControlError(f"Invalid {name} header: expected 0 to {MAX_MS:g} milliseconds")
    return number


def _pack_fault(value: str) -> str:
    kind = value.strip().lower()
    if kind not in PACK_FAULTS:
        raise ControlError(
            f"Invalid x-sim-pack-fault header: {value!r}; expected one of {', '.join(PACK_FAULTS)}"
        )
    return kind


def parse_controls(headers: Mapping[str, str]) -> Controls:
    """Controls from lower-cased request headers; raises ControlError for bad values."""
    values: dict[str, object] = {}
    for attr, header in _INTS.items():
        if header in headers:
            values[attr] = _int(header, headers[header])
    for attr, header in _MILLIS.items():
        if header in headers:
            values[attr] = _millis(header, headers[header])
    for attr, header in _TEXTS.items():
        if header in headers:
            values[attr] = headers[header]
    if headers.get("x-sim-no-done", "").lower() in ("1", "true", "yes"):
        values["no_done"] = True
    status = values.get("status")
    if status is not None and not (isinstance(status, int) and 400 <= status <= 599):
        raise ControlError("Invalid x-sim-status header: expected an error status 400 to 599")
    pack_fault = headers.get("x-sim-pack-fault")
    if pack_fault is not None:
        values["pack_fault"] = _pack_fault(pack_fault)
    if values.get("keepalive_ms") == 0:
        raise ControlError("Invalid x-sim-keepalive-ms header: it must be positive")
    return Controls(**values)  # type: ignore[arg-type]


class FaultKeys:
    """How many requests have carried each X-Sim-Fault-Key (per server)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def admit(self, headers: Mapping[str, str], controls: Controls) -> Controls:
        key = headers.get("x-sim-fault-key")
        if key is None:
            return controls
        times = _int("x-sim-fault-times", headers.get("x-sim-fault-times", "1"))
        self._seen[key] = self._seen.get(key, 0) + 1
        return controls if self._seen[key] <= times else controls.without_faults()


def random_fault(rng: random.Random, config: SimConfig, controls: Controls) -> Controls:
    """Maybe add a fault drawn at `config.fault_rate` (requests without fault headers)."""
    if config.fault_rate <= 0 or controls.has_fault or rng.random() >= config.fault_rate:
        return controls
    kind = rng.choice(config.fault_pool)
    events = rng.randint(1, 8)
    table: dict[str, dict[str, object]] = {
        "rate_limit": {"status": 429},
        "server_error": {"status": 500},
        "overloaded": {"status": 503},
        "drop": {"drop_after_events": events, "drop_after_bytes": 40 * events},
        "end_early": {"end_after_events": events},
        "no_done": {"no_done": True},
        "stall": {"stall_after_events": events, "stall_ms": rng.randint(50, 400)},
        "malformed": {"malformed_at": events},
        "insufficient": {"insufficient_after_events": events},
        "aborted": {"aborted_after_events": events},
        "queue": {"queue_ms": rng.randint(50, 400)},
    }
    return replace(controls, **table[kind])  # type: ignore[arg-type]
