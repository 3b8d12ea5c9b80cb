"""Circuit breaker transitions and upstream fallback, on an injected clock."""

from __future__ import annotations

import pytest

from dskit.client._errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    RateLimitError,
)
from dskit.gateway.upstreams._breaker import (
    AllUpstreamsDownError,
    BreakerSettings,
    CircuitBreaker,
    Upstream,
    UpstreamChooser,
    is_upstream_failure,
)


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = BreakerSettings(failure_threshold=3, window=10.0, cooldown=5.0, half_open_probes=1)


def half_open() -> tuple[FakeClock, CircuitBreaker]:
    """A breaker opened by enough failures, its cool-down just over."""
    clock = FakeClock()
    breaker = CircuitBreaker("a", SETTINGS, clock)
    for _ in range(SETTINGS.failure_threshold):
        breaker.failure()
    clock.now += SETTINGS.cooldown
    return clock, breaker


def test_opens_after_threshold_within_window_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("a", SETTINGS, clock)
    breaker.failure()
    breaker.failure()
    clock.now += 11  # the first two fall out of the window
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(5.0)


def test_half_open_probe_closes_on_success_and_reopens_on_failure() -> None:
    clock, breaker = half_open()
    assert breaker.state == "half_open"
    assert breaker.allow(), "one probe goes through"
    assert not breaker.allow(), "a second one waits for the first"
    breaker.failure()
    assert breaker.state == "open" and breaker.retry_after() == pytest.approx(5.0)
    clock.now += 5.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_probe_that_never_reports_frees_its_slot() -> None:
    clock, breaker = half_open()
    assert breaker.allow()
    assert not breaker.allow(), "the probe holds its slot"
    clock.now += 5.1
    assert breaker.allow()


def test_which_errors_count_against_the_upstream() -> None:
    assert is_upstream_failure(APIConnectionError("down"))
    assert is_upstream_failure(InternalServerError("boom", status_code=500))
    assert is_upstream_failure(RateLimitError("slow down", status_code=429))
    assert not is_upstream_failure(BadRequestError("bad", status_code=400))
    assert not is_upstream_failure(AuthenticationError("key", status_code=401))
    assert not is_upstream_failure(ValueError("ours"))


def test_chooser_falls_back_in_order_and_degrades() -> None:
    clock = FakeClock()
    main, backup = Upstream("main", "http://a"), Upstream("backup", model="deepseek-flash")
    chooser = UpstreamChooser([main, backup], SETTINGS, clock)
    assert chooser.next() == main
    assert chooser.next(tried=["main"]) == backup
    for _ in range(3):
        chooser.report(main, APIConnectionError("down"))
    assert chooser.next() == backup
    chooser.report(backup, BadRequestError("bad", status_code=400))
    assert chooser.states() == {"main": "open", "backup": "closed"}
    clock.now += 2.0
    for _ in range(3):
        chooser.report(backup, InternalServerError("boom", status_code=503))
    with pytest.raises(AllUpstreamsDownError) as caught:
        chooser.next()
    assert caught.value.retry_after == pytest.approx(3.0), "main re-probes first"
    clock.now += 3.0
    assert chooser.next() == main
    chooser.report(main, None)
    assert chooser.states()["main"] == "closed"


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        UpstreamChooser([])
    with pytest.raises(ValueError, match="unique"):
        UpstreamChooser([Upstream("a"), Upstream("a")])
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ValueError, match="positive"):
        BreakerSettings(cooldown=0)
