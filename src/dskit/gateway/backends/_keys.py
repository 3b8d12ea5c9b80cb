"""Gateway API keys and who owns which session.

A key is `sk-gw-` plus 32 random bytes (URL-safe base64). Only its SHA-256 is stored: a
key that high in entropy needs no slow hash, and a leaked database yields no usable key.
Each key maps to a principal (a user or an app); sessions belong to the principal that
created them, and any other principal is told 404, as if the session did not exist.

Keys and ownership sit behind the `KeyBackend` protocol, chosen once at startup:
`KeyStore`, a small SQLite file of its own (`gateway.sqlite3` beside the session store,
whichever session store is in use), or with `--redis` `RedisKeyStore`
(`_redis_keys.py`), so every instance of a fleet agrees on them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from dskit._files import private_file
from dskit.client._errors import ValidationError

KEY_PREFIX = "sk-gw-"
PRINCIPAL = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
LOCAL_PRINCIPAL = "local"
SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_keys (
    key_id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    principal TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS gateway_owners (
    session_id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_owners_principal ON gateway_owners(principal, created);
"""


def default_keys_path() -> Path:
    from dskit.store import default_store_path

    return default_store_path().parent / "gateway.sqlite3"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as listed: never the key itself, only its id (a prefix of its hash)."""

    key_id: str
    principal: str
    created: float
    revoked: float | None


class KeyBackend(Protocol):
    """Where hashed keys and session ownership live (SQLite or Redis). Calls are
    synchronous and short: one indexed lookup or one round trip each."""

    def create(self, principal: str) -> tuple[str, KeyInfo]: ...
    def list_keys(self) -> list[KeyInfo]: ...
    def revoke(self, key_id: str) -> bool: ...
    def has_keys(self) -> bool: ...
    def principal_for(self, key: str) -> str | None: ...
    def own(self, session_id: str, principal: str) -> None: ...
    def owner(self, session_id: str) -> str | None: ...
    def sessions_of(self, principal: str) -> set[str]: ...
    def disown(self, session_id: str) -> None: ...
    def close(self) -> None: ...


def new_key(principal: str) -> tuple[str, str, KeyInfo]:
    """A fresh key for a valid principal: (the key, its SHA-256, its info)."""
    if not isinstance(principal, str) or not PRINCIPAL.match(principal):
        raise ValidationError(
            "principal must be 1 to 64 characters of [A-Za-z0-9_.@-]", param="principal"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hash_key(key)
    return key, digest, KeyInfo(digest[:12], principal, time.time(), None)


def well_formed(key: str) -> bool:
    """Whether `key` could be a gateway key at all (checked before any lookup)."""
    return key.startswith(KEY_PREFIX) and len(key) <= 200


class KeyStore:
    """Hashed gateway keys and session ownership in one SQLite file (WAL): the
    `KeyBackend` of a single instance."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_keys_path()
        private_file(self.path)  # key hashes and who owns which session: the owner's only
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"KeyStore(path={str(self.path)!r})"

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def create(self, principal: str) -> tuple[str, KeyInfo]:
        """A new key for `principal`: returns the key (shown once) and its info."""
        key, digest, info = new_key(principal)
        with self._db() as db:
            db.execute(
                "INSERT INTO gateway_keys VALUES (?, ?, ?, ?, NULL)",
                (info.key_id, digest, principal, info.created),
            )
        return key, info

    def list_keys(self) -> list[KeyInfo]:
        with self._db() as db:
            rows = db.execute(
                "SELECT key_id, principal, created, revoked FROM gateway_keys ORDER BY created"
            ).fetchall()
        return [KeyInfo(*row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        with self._db() as db:
            cursor = db.execute(
                "UPDATE gateway_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                (time.time(), key_id),
            )
        return cursor.rowcount > 0

    def has_keys(self) -> bool:
        """Whether any key was ever created (revoked ones count: auth stays on)."""
        with self._db() as db:
            return db.execute("SELECT 1 FROM gateway_keys LIMIT 1").fetchone() is not None

    def principal_for(self, key: str) -> str | None:
        """The principal of a valid, unrevoked key, else None."""
        if not well_formed(key):
            return None
        with self._db() as db:
            row = db.execute(
                "SELECT principal FROM gateway_keys WHERE hash = ? AND revoked IS NULL",
                (hash_key(key),),
            ).fetchone()
        return str(row[0]) if row else None

    # ---- session ownership ---------------------------------------------------------

    def own(self, session_id: str, principal: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO gateway_owners VALUES (?, ?, ?)",
                (session_id, principal, time.time()),
            )

    def owner(self, session_id: str) -> str | None:
        with self._db() as db:
            row = db.execute(
                "SELECT principal FROM gateway_owners WHERE session_id = ?", (session_id,)
            ).fetchone()
        return str(row[0]) if row else None

    def sessions_of(self, principal: str) -> set[str]:
        with self._db() as db:
            rows = db.execute(
                "SELECT session_id FROM gateway_owners WHERE principal = ?", (principal,)
            ).fetchall()
        return {str(row[0]) for row in rows}

    def disown(self, session_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM gateway_owners WHERE session_id = ?", (session_id,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
