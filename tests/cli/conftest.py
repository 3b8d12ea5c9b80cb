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
from dskit.config import ENV_VARS
from dskit.store import SessionRecord, SQLiteStore


@dataclass
class Home:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def store(self) -> Path:
        return self.root / "sessions.sqlite3"

    def sessions(self) -> list[SessionRecord]:
        """Every session in the default store, most recently updated first."""
        if not self.store.exists():
            return []
        store = SQLiteStore(self.store)
        try:
            return [store.load(info.id) for info in store.list_sessions()]
        finally:
            store.close()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("DSKIT_HOME", str(tmp_path))
    monkeypatch.setenv("DSKIT_CONFIG", str(tmp_path / "config.toml"))
    for var in (*ENV_VARS.values(), "DSKIT_SIM_TOKEN_MS"):
        monkeypatch.delenv(var, raising=False)
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
