"""Upstream protection: a circuit breaker per upstream and a chooser that falls back in order.

A breaker is *closed* (calls flow) until `failure_threshold` failures land within
`window` seconds; then it is *open*: calls are refused at once, so a dead upstream costs
no timeouts, for `cooldown` seconds. After that it is *half-open*: a few probe calls go
through; a success closes it, a failure opens it for another cool-down.

The chooser walks the upstreams (URLs, models, or both) in the configured order and
offers those whose breaker lets a call through. When none does, the gateway degrades
(cached answers, else a 503 whose Retry-After is the soonest re-probe): it never hangs.

Breakers are per instance on purpose: each instance sees its own path to the upstream,
and sharing state would make one instance's network trouble everyone's outage.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from dskit.client._errors import APIConnectionError, APIStatusError, IncompleteStreamError

State = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens (`failure_threshold` in `window` s) and how it recovers."""

    failure_threshold: int = 5
    window: float = 30.0
    cooldown: float = 10.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_probes < 1:
            raise ValueError("failure_threshold and half_open_probes must be at least 1")
        if self.window <= 0 or self.cooldown <= 0:
            raise ValueError("window and cooldown must be positive")


def is_upstream_failure(exc: BaseException) -> bool:
    """Failures that say the upstream is unwell: no connection, timeouts, 429 and 5xx.

    A stream the client could not complete, even by resuming, counts too. A 400 or 401
    is the request's or the key's fault; it must not open the breaker.
    """
    if isinstance(exc, APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, APIConnectionError | IncompleteStreamError)


class CircuitBreaker:
    """The state of one upstream, as this instance has seen it."""

    def __init__(
        self, name: str, settings: BreakerSettings | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._probes: deque[float] = deque()

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.settings.cooldown:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """May a call go now? In half-open state this books one of the probe slots."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        while self._probes and now - self._probes[0] > self.settings.cooldown:
            self._probes.popleft()  # a probe that never reported back frees its slot
        if len(self._probes) >= self.settings.half_open_probes:
            return False
        self._probes.append(now)
        return True

    def success(self) -> None:
        self._opened_at = None
        self._failures.clear()
        self._probes.clear()

    def failure(self) -> None:
        now = self._clock()
        if self._opened_at is not None:  # a failed probe: open again for a full cool-down
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.settings.window:
            self._failures.popleft()
        if len(self._failures) >= self.settings.failure_threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._failures.clear()
        self._probes.clear()

    def retry_after(self) -> float:
        """Seconds until this breaker lets a call through again (0 when it does now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.settings.cooldown - (self._clock() - self._opened_at))


@dataclass(frozen=True, slots=True)
class Upstream:
    """One way to get an answer: a base URL (None: the default one) and/or a model override."""

    name: str
    base_url: str | None = None
    model: str | None = None


def parse_upstreams(primary: str | None, fallbacks: Sequence[str]) -> list[Upstream]:
    """`--fallback` values in order: `http(s)://URL`, `model:NAME`, or `URL#model:NAME`."""
    upstreams = [Upstream("primary", primary)]
    for index, spec in enumerate(fallbacks, 1):
        url, _, model = spec.partition("#") if "://" in spec else ("", "", spec)
        if url and not re.match(r"^https?://[^\s/]+", url):
            raise ValueError(f"invalid fallback URL {url!r}")
        if (model and not model.startswith("model:")) or model == "model:" or not (url or model):
            raise ValueError(
                f"a fallback is http(s)://URL, model:NAME or URL#model:NAME, got {spec!r}"
            )
        model = model.removeprefix("model:")
        upstreams.append(Upstream(f"fallback{index}", url or primary, model or None))
    return upstreams


class AllUpstreamsDownError(RuntimeError):
    """Every upstream's breaker is open; `retry_after` is when the first one re-probes."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"all upstreams are unavailable; retry in {retry_after:.0f}s")
        self.retry_after = retry_after


class UpstreamChooser:
    """The upstreams in fallback order, each behind its own breaker."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        settings: BreakerSettings | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique: {names}")
        self.upstreams = list(upstreams)
        self.breakers = {u.name: CircuitBreaker(u.name, settings, clock) for u in upstreams}

    def next(self, tried: Sequence[str] = ()) -> Upstream:
        """The first upstream not yet tried whose breaker allows a call, else raise."""
        for upstream in self.upstreams:
            if upstream.name not in tried and self.breakers[upstream.name].allow():
                return upstream
        raise AllUpstreamsDownError(self.retry_after())

    def report(self, upstream: Upstream, exc: BaseException | None) -> None:
        """Tell the breaker how a call went (None: it succeeded)."""
        breaker = self.breakers[upstream.name]
        if exc is None:
            breaker.success()
        elif is_upstream_failure(exc):
            breaker.failure()
        else:
            breaker.success()  # the upstream answered; the request was at fault

    def retry_after(self) -> float:
        """When the first open breaker lets a probe through (at least one second)."""
        return max(1.0, min(b.retry_after() for b in self.breakers.values()))

    def states(self) -> dict[str, State]:
        return {name: breaker.state for name, breaker in self.breakers.items()}
