"""One way to name a store in settings and flags (`--store`), for every command."""

from __future__ import annotations

import os

from dskit.client._errors import ConfigError
from dskit.store._base import SessionStore
from dskit.store._memory import MemoryStore
from dskit.store._sqlite import SQLiteStore

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(spec: str | None) -> SessionStore:
    """The store `spec` names: nothing (the default SQLite file), a SQLite path (`~` is
    expanded) or `sqlite:///path`, `memory`, or a `redis://` URL. Any other URL is an
    error rather than a SQLite file with a strange name."""
    if not spec:
        return SQLiteStore()
    if spec == "memory":
        return MemoryStore()
    if spec.startswith(REDIS_SCHEMES):
        from dskit.store._redis import RedisStore

        return RedisStore(spec)
    path = spec.removeprefix("sqlite:///")  # sqlite:////abs/path keeps its leading /
    if "://" in path:
        raise ConfigError(
            f"unknown store URL {spec!r}: use a path, sqlite:///path, memory or redis://..."
        )
    return SQLiteStore(os.path.expanduser(path))
