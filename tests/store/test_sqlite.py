"""SQLite specifics: one WAL file, default path, several writers on one file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from dskit.store import (
    SessionConflictError,
    SessionRecord,
    SQLiteStore,
    StoredMessage,
    StoreError,
    default_store_path,
)


def test_default_path_honours_dskit_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSKIT_HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / "sessions.sqlite3"
    store = SQLiteStore()
    assert store.path == tmp_path / "home" / "sessions.sqlite3"
    assert store.path.exists()
    store.close()


def test_default_path_without_dskit_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSKIT_HOME", raising=False)
    path = default_store_path()
    assert path.name == "sessions.sqlite3" and path.parent.name == "dskit"


def test_file_is_in_wal_mode_and_readable_by_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(path)
    record = store.create(SessionRecord())
    store.append(record.id, [StoredMessage({"role": "user", "content": "hi"})], expected_version=0)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = SQLiteStore(path)
    assert other.load(record.id).messages[0].content == "hi"
    store.close()
    other.close()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="cannot open session store"):
        SQLiteStore(path)


def test_writers_on_one_file_never_lose_a_message(tmp_path: Path) -> None:
    """Two stores (as two processes would) append concurrently, retrying on conflict."""
    path = tmp_path / "shared.sqlite3"
    first = SQLiteStore(path)
    session_id = first.create(SessionRecord()).id
    first.close()
    conflicts = []

    def writer(name: str) -> None:
        store = SQLiteStore(path)
        for i in range(25):
            while True:
                version = store.load(session_id).version
                message = StoredMessage({"role": "user", "content": f"{name}{i}"})
                try:
                    store.append(session_id, [message], expected_version=version)
                    break
                except SessionConflictError:
                    conflicts.append(name)
        store.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = SQLiteStore(path)
    final = reader.load(session_id)
    reader.close()
    contents = [m.content for m in final.messages]
    assert sorted(contents) == sorted(f"{n}{i}" for n in "AB" for i in range(25))
    assert final.version == 50
