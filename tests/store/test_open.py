"""`open_store`: the one way settings and flags name a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from dskit import ConfigError
from dskit.store import MemoryStore, RedisStore, SQLiteStore, open_store


def test_each_spelling_opens_its_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DSKIT_HOME", str(tmp_path / "home"))
    cases = {
        None: tmp_path / "home" / "sessions.sqlite3",
        str(tmp_path / "a.sqlite3"): tmp_path / "a.sqlite3",
        f"sqlite:///{tmp_path}/b.sqlite3": tmp_path / "b.sqlite3",
        "~/c.sqlite3": tmp_path / "c.sqlite3",
    }
    for spec, path in cases.items():
        store = open_store(spec)
        assert isinstance(store, SQLiteStore)
        store.close()
        assert path.exists(), spec
    assert isinstance(open_store("memory"), MemoryStore)
    redis = open_store("redis://127.0.0.1:1/0")  # connects lazily
    assert isinstance(redis, RedisStore)
    redis.close()


def test_a_foreign_url_is_refused_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="unknown store URL"):
        open_store("postgres://db/x")
    assert list(tmp_path.iterdir()) == []
