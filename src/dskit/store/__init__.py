"""Where conversations live: one `SessionStore` protocol, three stores.

- `SQLiteStore`: the embedded default, one WAL file (`$DSKIT_HOME/sessions.sqlite3` or the
  user data dir).
- `RedisStore`: shared by processes and machines; Redis Cluster safe; optional TTL.
- `MemoryStore`: this process only (what a session uses when given no store).

Errors: `StoreError` (a `DSKitError`) with `SessionNotFoundError`, `SessionConflictError`
(another writer got there first: reload and retry) and `SessionFormatError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dskit.store._base import SessionStore, default_store_path
from dskit.store._memory import MemoryStore
from dskit.store._model import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    SessionConflictError,
    SessionFormatError,
    SessionInfo,
    SessionNotFoundError,
    SessionRecord,
    StoreBusyError,
    StoredMessage,
    StoreError,
    StoreUnavailableError,
    export_record,
    import_record,
)
from dskit.store._open import open_store
from dskit.store._sqlite import SQLiteStore

if TYPE_CHECKING:
    from dskit.store._redis import RedisStore

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SessionConflictError",
    "SessionFormatError",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionRecord",
    "SessionStore",
    "StoreBusyError",
    "StoreError",
    "StoreUnavailableError",
    "StoredMessage",
    "default_store_path",
    "export_record",
    "import_record",
    "open_store",
]


def __getattr__(name: str) -> Any:
    """`RedisStore` is imported on first use: redis-py is an optional dependency."""
    if name == "RedisStore":
        from dskit.store._redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'dskit.store' has no attribute {name!r}")
