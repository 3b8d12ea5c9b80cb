"""Every store test runs against each store: memory, a real SQLite file, a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dskit.store import MemoryStore, SessionStore, SQLiteStore

KINDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> SessionStore:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "sessions.sqlite3")
    from dskit.store import RedisStore

    url = request.getfixturevalue("redis_url")
    return RedisStore(url, namespace=request.getfixturevalue("redis_prefix"))


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    made = make_store(request.param, request, tmp_path)
    yield made
    made.close()
