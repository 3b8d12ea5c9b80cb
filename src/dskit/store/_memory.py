"""A store that lives in this process only: what a session uses when given no store.

It follows the same protocol (versions, conflicts) as the durable stores, so a session
behaves the same whichever store it has; only durability differs.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Collection, Sequence
from typing import Any

from dskit.store._base import DEFAULT_LIMIT, InlineAsyncMixin, check_limit
from dskit.store._model import (
    SessionConflictError,
    SessionInfo,
    SessionNotFoundError,
    SessionRecord,
    StoredMessage,
    StoreError,
    matches,
    title_from,
)

_ATOMS = frozenset({str, int, float, bool, type(None)})


def _copy_value(value: Any) -> Any:
    """A deep copy of a JSON-like value; anything else goes through `copy.deepcopy`.
    Eight times faster than `deepcopy` on a stored conversation (no memo, no dispatch
    table), which a session loads at every turn."""
    kind = type(value)
    if kind is dict:
        return {key: _copy_value(item) for key, item in value.items()}
    if kind is list:
        return [_copy_value(item) for item in value]
    if kind in _ATOMS:
        return value
    return copy.deepcopy(value)


# every field `_copy_message` copies: a field added to StoredMessage must be added there
_MESSAGE_FIELDS = ("message", "incomplete", "summary", "covers", "usage", "tokens", "created")
assert tuple(f.name for f in dataclasses.fields(StoredMessage)) == _MESSAGE_FIELDS


def _copy_message(stored: StoredMessage) -> StoredMessage:
    """`stored`, copied (the constructor: `dataclasses.replace` is several times slower)."""
    return StoredMessage(
        _copy_value(stored.message), stored.incomplete, stored.summary, stored.covers,
        _copy_value(stored.usage), stored.tokens, stored.created,
    )  # fmt: skip


def _copy_record(record: SessionRecord) -> SessionRecord:
    return dataclasses.replace(
        record, params=_copy_value(record.params),
        messages=[_copy_message(m) for m in record.messages],
    )  # fmt: skip


class MemoryStore(InlineAsyncMixin):
    """Sessions in a dict; nothing survives the process. Its async twins run on the
    loop: nothing here blocks."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(sessions={len(self._sessions)})"

    def create(self, record: SessionRecord) -> SessionRecord:
        with self._lock:
            if record.id in self._sessions:
                raise SessionConflictError(record.id, record.version, None)
            stored = _copy_record(record)
            stored.title = stored.title or title_from(stored.messages)
            self._sessions[record.id] = stored
            return _copy_record(stored)

    def load(self, session_id: str) -> SessionRecord:
        with self._lock:
            return _copy_record(self._get(session_id))

    def _get(self, session_id: str) -> SessionRecord:
        record = self._sessions.get(session_id)
        if record is None:
            raise SessionNotFoundError(session_id)
        return record

    def _checked(self, session_id: str, expected_version: int) -> SessionRecord:
        record = self._get(session_id)
        if record.version != expected_version:
            raise SessionConflictError(session_id, expected_version, record.version)
        record.version += 1
        record.updated = time.time()
        return record

    def append(
        self, session_id: str, messages: Sequence[StoredMessage], *, expected_version: int
    ) -> int:
        with self._lock:
            record = self._checked(session_id, expected_version)
            record.messages.extend(_copy_message(m) for m in messages)
            record.title = record.title or title_from(record.messages)
            return record.version

    def replace(
        self, session_id: str, index: int, message: StoredMessage, *, expected_version: int
    ) -> int:
        with self._lock:
            record = self._get(session_id)
            if not 0 <= index < len(record.messages):
                raise StoreError(f"no message at index {index} in session {session_id!r}")
            record = self._checked(session_id, expected_version)
            record.messages[index] = _copy_message(message)
            return record.version

    def truncate(self, session_id: str, length: int, *, expected_version: int) -> int:
        with self._lock:
            record = self._checked(session_id, expected_version)
            del record.messages[max(length, 0) :]
            return record.version

    def _update(self, session_id: str, changes: dict[str, Any], expected_version: int) -> int:
        with self._lock:
            record = self._checked(session_id, expected_version)
            for name, value in copy.deepcopy(changes).items():
                setattr(record, name, value)
            return record.version

    def list_sessions(
        self, limit: int = DEFAULT_LIMIT, ids: Collection[str] | None = None
    ) -> list[SessionInfo]:
        check_limit(limit)
        with self._lock:
            chosen = self._sessions.values() if ids is None else (
                self._sessions[i] for i in set(ids) if i in self._sessions
            )  # fmt: skip
            records = sorted(chosen, key=lambda r: r.updated, reverse=True)
            return [r.info() for r in records[:limit]]

    def search(self, text: str, limit: int = DEFAULT_LIMIT) -> list[SessionInfo]:
        check_limit(limit)
        with self._lock:
            records = sorted(self._sessions.values(), key=lambda r: r.updated, reverse=True)
            return [r.info() for r in records if matches(r, text)][:limit]

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def close(self) -> None:
        """Nothing to release; the sessions stay readable."""
