"""CLI fixtures: every test gets its own DSKIT_HOME and DSKIT_CONFIG under tmp_path, so
nothing touches the real home; `cli` runs a command through click's CliRunner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dskit.cli import main


@dataclass
class Home:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def store(self) -> Path:
        return self.root / "sessions.sqlite3"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("DSKIT_HOME", str(tmp_path))
    monkeypatch.setenv("DSKIT_CONFIG", str(tmp_path / "config.toml"))
    for var in ("DSKIT_MODEL", "DSKIT_SYSTEM", "DSKIT_TEMPERATURE", "DSKIT_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("DSKIT_SIM_TOKEN_MS", raising=False)
    return Home(tmp_path)


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run `dskit ARGS` in-process; `input` is piped to stdin."""

    def run(*args: str, input: str | None = None, env: dict[str, Any] | None = None) -> Result:
        return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)

    return run


@pytest.fixture
def on_sim(sim: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Options that point a command at the shared simulator (with a key, so no notice)."""
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test-0123456789abcdef")
    return ["--base-url", sim.base_url]
