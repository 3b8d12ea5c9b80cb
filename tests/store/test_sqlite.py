"""SQLite specifics: one WAL file, default path, several writers on one file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
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


async def _queued(store: SQLiteStore, count: int, within: float = 10.0) -> None:
    """Poll (with a deadline) until `count` writes wait in the queue: the writer holds the
    first one, blocked on the file's lock that the test holds."""
    deadline = time.monotonic() + within
    while store._group._queue.qsize() != count:
        assert time.monotonic() < deadline, f"{store._group._queue.qsize()} writes queued"
        await asyncio.sleep(0.005)


def _count(path: Path, session_id: str) -> int:
    """What another connection (another process) sees of a session: committed rows."""
    with sqlite3.connect(path) as other:
        row = other.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,))
        return int(row.fetchone()[0])


def test_async_writes_queued_together_commit_together_and_each_returns_once_durable(
    tmp_path: Path,
) -> None:
    """64 async writers at once: the writes queued while one group commits go out as the
    next group, one transaction; a write's call returns only once its group committed."""
    path = tmp_path / "group.sqlite3"
    store = SQLiteStore(path)
    ids = [store.create(SessionRecord()).id for _ in range(64)]

    async def write(session_id: str) -> int:
        message = StoredMessage({"role": "user", "content": f"q {session_id}"})
        version = await store.aappend(session_id, [message], expected_version=0)
        assert _count(path, session_id) == 1  # committed before the call returned
        return version

    async def run() -> list[int]:
        with store._lock:  # the writer takes the first write, then waits on the file
            tasks = [asyncio.ensure_future(write(session_id)) for session_id in ids]
            await _queued(store, 63)
        return await asyncio.gather(*tasks)

    before = store._group.groups
    assert asyncio.run(run()) == [1] * 64
    assert store._group.groups - before == 2  # the first write, then the 63 behind it
    assert all(len(store.load(session_id).messages) == 1 for session_id in ids)
    store.close()


def test_a_stale_write_in_a_group_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "stale.sqlite3"
    store = SQLiteStore(path)
    session_id = store.create(SessionRecord()).id
    message = StoredMessage({"role": "user", "content": "q"})

    async def run() -> list[object]:
        with store._lock:
            tasks = [
                asyncio.ensure_future(store.aappend(session_id, [message], expected_version=v))
                for v in (0, 0, 1)  # the second one is stale once the first has landed
            ]
            await _queued(store, 2)
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, stale, third = asyncio.run(run())
    assert (first, third) == (1, 2)
    assert isinstance(stale, SessionConflictError)
    assert _count(path, session_id) == 2 and store.load(session_id).version == 2
    store.close()


def test_closing_commits_the_queued_writes_first(tmp_path: Path) -> None:
    path = tmp_path / "close.sqlite3"
    store = SQLiteStore(path)
    ids = [store.create(SessionRecord()).id for _ in range(8)]
    message = StoredMessage({"role": "user", "content": "q"})

    async def run() -> None:
        writes = [store.aappend(i, [message], expected_version=0) for i in ids]
        await asyncio.gather(*writes, store.aclose())

    asyncio.run(run())
    assert [_count(path, i) for i in ids] == [1] * 8


def test_a_write_that_fills_the_disk_fails_its_whole_group_and_none_is_saved(
    tmp_path: Path,
) -> None:
    """SQLite rolls the whole transaction back on a full disk (here a page limit on the
    file): the writes after it in the group must not run on their own, committed alone
    and reported failed all the same (a retry would then save them twice)."""
    path = tmp_path / "full.sqlite3"
    store = SQLiteStore(path)
    ids = [store.create(SessionRecord()).id for _ in range(4)]
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 8}")
    small = StoredMessage({"role": "user", "content": "q"})
    huge = StoredMessage({"role": "user", "content": "x" * 200_000})

    async def run() -> list[object]:
        with store._lock:
            tasks = [
                asyncio.ensure_future(store.aappend(i, [m], expected_version=0))
                for i, m in zip(ids, (small, small, huge, small), strict=True)
            ]  # the writer holds the first alone; the other three make the next group
            await _queued(store, 3)
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, *group = asyncio.run(run())
    assert first == 1
    assert all(isinstance(outcome, StoreError) for outcome in group), group
    assert all("full" in str(outcome) for outcome in group), group  # the cause, told
    assert [_count(path, i) for i in ids] == [1, 0, 0, 0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 1000}")
    assert asyncio.run(store.aappend(ids[3], [small], expected_version=0)) == 1  # not stale
    store.close()
