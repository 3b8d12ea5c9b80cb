"""`models()` and `model_info()`: the figures come from `GET /models`, kept for an hour,
with the documented figures when the server cannot be asked or does not list a model."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dskit import AsyncDeepSeek, DeepSeek, RetryPolicy, ValidationError
from dskit._models import CONTEXT_WINDOW, MODELS_TTL, UNKNOWN_CONTEXT_WINDOW
from tests.conftest import free_port


class Clock:
    """A clock the test moves by hand (no sleeps)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.t += seconds


def test_models_carry_the_v4_metadata(sim: Any) -> None:
    with DeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        found = {m.id: m for m in client.models()}
    assert set(found) == {"deepseek-flash", "deepseek-v4-pro"}
    flash = found["deepseek-flash"]
    assert (flash.context_window, flash.max_output_tokens) == (CONTEXT_WINDOW, 393_216)
    assert flash.effort_levels == ("low", "high", "max") and flash.vision
    assert not found["deepseek-v4-pro"].vision and flash.owned_by == "deepseek"


def test_model_info_is_fetched_once_then_served_from_the_cache(sim_factory: Any) -> None:
    sim = sim_factory()
    clock = Clock()
    with DeepSeek(api_key="sk-test", base_url=sim.base_url, clock=clock) as client:
        assert client.model_info("deepseek-v4-pro").name == "DeepSeek-V4-Pro"
        sim.stop()  # the cache answers from now on
        assert client.model_info("deepseek-reasoner").id == "deepseek-flash"  # migrated
        assert client.model_info().context_window == CONTEXT_WINDOW
        clock.t += MODELS_TTL  # stale: asked again, fails, the documented figures serve
        assert client.model_info("deepseek-flash").context_window == CONTEXT_WINDOW


def test_an_unreachable_server_gives_the_documented_figures_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO, logger="dskit.client"):
        with DeepSeek(api_key="sk-test", base_url=url, retry=RetryPolicy(max_retries=0)) as client:
            assert client.model_info("deepseek-flash").context_window == CONTEXT_WINDOW
            assert client.model_info("my-own-model").context_window == UNKNOWN_CONTEXT_WINDOW
    said = [r.getMessage() for r in caplog.records if "GET /models failed" in r.getMessage()]
    assert len(said) == 1  # the failure is remembered for a minute, not retried per call
    assert "sk-test" not in caplog.text


async def test_async_model_info_matches(sim: Any) -> None:
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        info = await client.model_info("deepseek-flash")
        assert info.context_window == CONTEXT_WINDOW and info.default_effort == "high"


async def test_require_model_refuses_what_the_server_does_not_list_sync_and_async(
    sim: Any,
) -> None:
    offered = "the server offers deepseek-flash, deepseek-v4-pro"
    with DeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        with pytest.raises(ValidationError, match=f"unknown model 'bogus': {offered}") as sync:
            client.require_model("bogus")
        assert client.require_model("deepseek-reasoner").id == "deepseek-flash"
    async with AsyncDeepSeek(api_key="sk-test", base_url=sim.base_url) as aclient:
        with pytest.raises(ValidationError) as async_:
            await aclient.require_model("bogus")
        assert (await aclient.require_model("deepseek-reasoner")).id == "deepseek-flash"
    assert str(async_.value) == str(sync.value) and async_.value.param == "model"


def test_require_model_without_a_list_accepts_any_name() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with DeepSeek(api_key="sk-test", base_url=url, retry=RetryPolicy(max_retries=0)) as client:
        assert client.require_model("my-own-model").context_window == UNKNOWN_CONTEXT_WINDOW
