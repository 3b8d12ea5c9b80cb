"""The embedded default store: one SQLite file in WAL mode.

WAL lets readers (a `dskit sessions show` in another terminal) read while a session
writes, and `synchronous=FULL` makes each committed write durable before the call
returns, so a finished message survives a crash or power cut. Writers take the write lock
up front (`BEGIN IMMEDIATE`) and check the version inside that transaction, so two
processes on one file cannot both win.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from dskit._files import private_file, tighten
from dskit.store._base import (
    DEFAULT_LIMIT,
    ThreadedAsyncMixin,
    check_limit,
    default_store_path,
)
from dskit.store._commit import GroupCommit, Outcome, failure, result
from dskit.store._model import (
    SessionConflictError,
    SessionFormatError,
    SessionInfo,
    SessionNotFoundError,
    SessionRecord,
    StoredMessage,
    StoreError,
    title_from,
)

R = TypeVar("R")
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    system TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated);
"""
INFO_SQL = (
    "SELECT s.id, s.title, s.model, s.created, s.updated, s.version, "
    "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) FROM sessions s"
)


def _encode(message: StoredMessage) -> tuple[str, str]:
    return message.content, orjson.dumps(message.to_dict()).decode()


def _decode(data: str) -> StoredMessage:
    try:
        return StoredMessage.from_dict(orjson.loads(data))
    except orjson.JSONDecodeError as exc:
        raise SessionFormatError(f"a stored message is not valid JSON: {exc}") from None


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SQLiteStore(ThreadedAsyncMixin):
    """Sessions in one SQLite file (default: the user data dir, or `$DSKIT_HOME`)."""

    def __init__(self, path: str | Path | None = None, *, timeout: float = 10.0) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if path is None and self.path.parent.exists():
            tighten(self.path.parent)  # dskit's own data directory
        self._damaged: str | None = None  # set once corruption is seen: no more writes
        self._lock = threading.RLock()
        self._conn = self._connect(timeout)
        self._group = GroupCommit(self._commit_together, "dskit-sqlite-writes")

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _connect(self, timeout: float) -> sqlite3.Connection:
        if self.path.is_dir():
            raise StoreError(f"cannot open session store {str(self.path)!r}: it is a directory")
        try:
            private_file(self.path)
            conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"cannot open session store {str(self.path)!r}: {exc}") from None
        return conn

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's errors as one StoreError; a damaged file is never written again."""
        if self._damaged:
            raise StoreError(self._damaged)
        try:
            yield
        except sqlite3.OperationalError as exc:  # busy, read-only, disk full: not damage
            raise StoreError(f"session store {str(self.path)!r}: {exc}") from None
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            self._damaged = (
                f"the session store {str(self.path)!r} is damaged ({exc}); nothing more is "
                "written to it: move it aside to start afresh, or restore a backup"
            )
            raise StoreError(self._damaged) from None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._guard(), self._lock:
            yield self._conn

    @contextmanager
    def _snapshot(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Reads that see one state of the file (a group's writes so far, within one)."""
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from the start; in a
        group's transaction (`_commit_together`), a savepoint of its own."""
        with self._guard(), self._lock:
            if self._conn.in_transaction:
                with self._savepoint():
                    yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        self._conn.execute("SAVEPOINT write")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK TO write")
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("RELEASE write")
            raise
        self._conn.execute("RELEASE write")

    async def _offload_write(self, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        result: R = await self._group.run(functools.partial(call, *args, **kwargs))
        return result

    def _commit_together(self, calls: Sequence[Callable[[], Any]]) -> list[Outcome]:
        """`calls` (writes) in one transaction, each in its savepoint: their outcomes once
        committed; when the commit fails, that failure for every one of them."""
        try:
            with self._guard(), self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    outcomes = [self._within_group(call) for call in calls]
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
        except Exception as exc:  # nothing of the group was written
            return [failure(exc)] * len(calls)
        return outcomes

    def _within_group(self, call: Callable[[], Any]) -> Outcome:
        """One write of a group; when SQLite rolled the whole transaction back under it
        (disk full, I/O error), the group fails whole: a later write would otherwise
        commit alone and be reported failed although it was saved."""
        try:
            value = call()
        except Exception as exc:  # this write alone is undone (its savepoint)
            if not self._conn.in_transaction:
                raise StoreError(
                    f"session store {str(self.path)!r}: the transaction of a group of "
                    f"writes was rolled back ({exc}); none of them was saved"
                ) from exc
            return failure(exc)
        return result(value)

    def _bump(self, conn: sqlite3.Connection, session_id: str, expected: int) -> int:
        row = conn.execute("SELECT version FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
        if row[0] != expected:
            raise SessionConflictError(session_id, expected, row[0])
        conn.execute(
            "UPDATE sessions SET version = ?, updated = ? WHERE id = ?",
            (expected + 1, time.time(), session_id),
        )
        return expected + 1

    def _count(self, conn: sqlite3.Connection, session_id: str) -> int:
        row = conn.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,))
        count: int = row.fetchone()[0]
        return count

    def _insert(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        start: int,
        messages: Sequence[StoredMessage],
    ) -> None:
        rows = [(session_id, start + i, *_encode(m)) for i, m in enumerate(messages)]
        conn.executemany(
            "INSERT INTO messages (session_id, seq, content, data) VALUES (?, ?, ?, ?)", rows
        )

    def create(self, record: SessionRecord) -> SessionRecord:
        title = record.title or title_from(record.messages)
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, title, record.model, record.system,
                     orjson.dumps(record.params).decode(), record.created, record.updated,
                     record.version),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise SessionConflictError(record.id, record.version, None) from None
            self._insert(conn, record.id, 0, record.messages)
        return self.load(record.id)

    def load(self, session_id: str) -> SessionRecord:
        with self._read() as conn, self._snapshot(conn):
            head = conn.execute(
                "SELECT id, title, model, system, params, created, updated, version "
                "FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            rows = conn.execute(
                "SELECT data FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        if head is None:
            raise SessionNotFoundError(session_id)
        return SessionRecord(
            id=head[0], title=head[1], model=head[2], system=head[3],
            params=orjson.loads(head[4]), created=head[5], updated=head[6], version=head[7],
            messages=[_decode(row[0]) for row in rows],
        )  # fmt: skip

    def append(
        self, session_id: str, messages: Sequence[StoredMessage], *, expected_version: int
    ) -> int:
        with self._write() as conn:
            version = self._bump(conn, session_id, expected_version)
            self._insert(conn, session_id, self._count(conn, session_id), messages)
            title = title_from(list(messages))
            if title:
                conn.execute(
                    "UPDATE sessions SET title = ? WHERE id = ? AND title = ''", (title, session_id)
                )
        return version

    def replace(
        self, session_id: str, index: int, message: StoredMessage, *, expected_version: int
    ) -> int:
        with self._write() as conn:
            version = self._bump(conn, session_id, expected_version)
            cursor = conn.execute(
                "UPDATE messages SET content = ?, data = ? WHERE session_id = ? AND seq = ?",
                (*_encode(message), session_id, index),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"no message at index {index} in session {session_id!r}")
        return version

    def truncate(self, session_id: str, length: int, *, expected_version: int) -> int:
        with self._write() as conn:
            version = self._bump(conn, session_id, expected_version)
            conn.execute(
                "DELETE FROM messages WHERE session_id = ? AND seq >= ?",
                (session_id, max(length, 0)),
            )
        return version

    def _update(self, session_id: str, changes: dict[str, Any], expected_version: int) -> int:
        if "params" in changes:
            changes["params"] = orjson.dumps(changes["params"]).decode()
        with self._write() as conn:
            version = self._bump(conn, session_id, expected_version)
            for column, value in changes.items():  # column names come from header_changes
                conn.execute(f"UPDATE sessions SET {column} = ? WHERE id = ?", (value, session_id))
        return version

    def _infos(self, where: str, args: tuple[object, ...], limit: int) -> list[SessionInfo]:
        sql = f"{INFO_SQL} {where} ORDER BY s.updated DESC LIMIT ?"
        with self._read() as conn:
            rows = conn.execute(sql, (*args, check_limit(limit))).fetchall()
        return [SessionInfo(*row) for row in rows]

    def list_sessions(
        self, limit: int = DEFAULT_LIMIT, ids: Collection[str] | None = None
    ) -> list[SessionInfo]:
        if ids is None:
            return self._infos("", (), limit)
        # one JSON parameter, however many ids (no limit on bound variables)
        where = "WHERE s.id IN (SELECT value FROM json_each(?))"
        return self._infos(where, (orjson.dumps(list(ids)).decode(),), limit)

    def search(self, text: str, limit: int = DEFAULT_LIMIT) -> list[SessionInfo]:
        """Sessions whose title or any message contains `text` (case-insensitive for ASCII)."""
        pattern = _like_pattern(text)
        where = (
            "WHERE s.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
            "WHERE m.session_id = s.id AND m.content LIKE ? ESCAPE '\\')"
        )
        return self._infos(where, (pattern, pattern), limit)

    def delete(self, session_id: str) -> bool:
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return cursor.rowcount > 0

    def close(self) -> None:
        self._group.close()  # what was queued is committed first
        with self._lock:
            self._conn.close()
