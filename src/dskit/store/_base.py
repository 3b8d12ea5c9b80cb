"""The one protocol every session store follows, and what the stores share.

Every write names the version the writer last saw (`expected_version`) and returns the new
one; a stale version raises `SessionConflictError` and writes nothing. That check is what
lets two writers (two terminals, two gateway workers) share a session without losing a
message. Each method has an async twin prefixed with `a`, so an async session never
blocks its event loop: SQLite runs its work in a thread, Redis uses redis.asyncio.

`update` changes the header (model, system prompt, request params, title) under the same
version check, so a `/model` typed in one terminal cannot silently undo another's write.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

from dskit._validate import is_integer
from dskit.client._errors import ValidationError
from dskit.store._model import (
    SessionInfo,
    SessionRecord,
    StoredMessage,
    export_record,
    import_record,
    new_session_id,
)

DEFAULT_LIMIT = 50
R = TypeVar("R")


def default_store_path() -> Path:
    """`$DSKIT_HOME/sessions.sqlite3`, else the user data dir's `dskit/sessions.sqlite3`."""
    home = os.environ.get("DSKIT_HOME")
    if home:
        return Path(home).expanduser() / "sessions.sqlite3"
    import platformdirs

    return platformdirs.user_data_path("dskit") / "sessions.sqlite3"


@runtime_checkable
class SessionStore(Protocol):
    """Where conversations live. All writes are version-checked and durable on return."""

    def create(self, record: SessionRecord) -> SessionRecord: ...
    def load(self, session_id: str) -> SessionRecord: ...
    def append(
        self, session_id: str, messages: Sequence[StoredMessage], *, expected_version: int
    ) -> int: ...
    def replace(
        self, session_id: str, index: int, message: StoredMessage, *, expected_version: int
    ) -> int: ...
    def truncate(self, session_id: str, length: int, *, expected_version: int) -> int: ...
    def update(
        self,
        session_id: str,
        *,
        model: str | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
        title: str | None = None,
        expected_version: int,
    ) -> int: ...
    def list_sessions(
        self, limit: int = DEFAULT_LIMIT, ids: Collection[str] | None = None
    ) -> list[SessionInfo]:
        """The newest sessions first; with `ids`, only those (unknown ids are skipped)."""

    def search(self, text: str, limit: int = DEFAULT_LIMIT) -> list[SessionInfo]: ...
    def delete(self, session_id: str) -> bool: ...
    def export_session(self, session_id: str) -> dict[str, Any]: ...
    def import_session(self, data: Any, *, new_id: bool = False) -> SessionRecord: ...
    def close(self) -> None: ...

    async def acreate(self, record: SessionRecord) -> SessionRecord: ...
    async def aload(self, session_id: str) -> SessionRecord: ...
    async def aappend(
        self, session_id: str, messages: Sequence[StoredMessage], *, expected_version: int
    ) -> int: ...
    async def areplace(
        self, session_id: str, index: int, message: StoredMessage, *, expected_version: int
    ) -> int: ...
    async def atruncate(self, session_id: str, length: int, *, expected_version: int) -> int: ...
    async def aupdate(
        self,
        session_id: str,
        *,
        model: str | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
        title: str | None = None,
        expected_version: int,
    ) -> int: ...
    async def alist_sessions(
        self, limit: int = DEFAULT_LIMIT, ids: Collection[str] | None = None
    ) -> list[SessionInfo]: ...
    async def asearch(self, text: str, limit: int = DEFAULT_LIMIT) -> list[SessionInfo]: ...
    async def adelete(self, session_id: str) -> bool: ...
    async def aclose(self) -> None: ...


class ExportMixin:
    """Written once for every store: export/import over `load` and `create`, and the
    header `update` (checked by `header_changes`) over each store's own `_update`."""

    def update(
        self,
        session_id: str,
        *,
        model: str | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
        title: str | None = None,
        expected_version: int,
    ) -> int:
        changes = header_changes(model, system, params, title)
        return self._update(session_id, changes, expected_version)

    async def aupdate(
        self,
        session_id: str,
        *,
        model: str | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
        title: str | None = None,
        expected_version: int,
    ) -> int:
        changes = header_changes(model, system, params, title)
        return await self._aupdate(session_id, changes, expected_version)

    def _update(self, session_id: str, changes: dict[str, Any], expected_version: int) -> int:
        raise NotImplementedError

    async def _aupdate(
        self, session_id: str, changes: dict[str, Any], expected_version: int
    ) -> int:
        return await asyncio.to_thread(self._update, session_id, changes, expected_version)

    def export_session(self: SessionStore, session_id: str) -> dict[str, Any]:
        """The versioned JSON-ready export of one session."""
        return export_record(self.load(session_id))

    def import_session(self: SessionStore, data: Any, *, new_id: bool = False) -> SessionRecord:
        """Store an exported session; `new_id=True` imports a copy beside the original."""
        record = import_record(data)
        if new_id:
            record.id = new_session_id()
        record.version = 0
        return self.create(record)


class _Offloading(SessionStore, Protocol):
    """A store whose async twins run its sync methods through `_offload`."""

    async def _offload(self, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R: ...
    async def _offload_write(self, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R: ...


class ThreadedAsyncMixin(ExportMixin):
    """Async twins that run the blocking sync methods in a worker thread (`_offload`;
    writes through `_offload_write`, which a store may commit in groups)."""

    async def _offload(self, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        return await asyncio.to_thread(call, *args, **kwargs)

    async def _offload_write(self, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        return await self._offload(call, *args, **kwargs)

    async def _aupdate(
        self, session_id: str, changes: dict[str, Any], expected_version: int
    ) -> int:
        return await self._offload_write(self._update, session_id, changes, expected_version)

    async def acreate(self: _Offloading, record: SessionRecord) -> SessionRecord:
        return await self._offload_write(self.create, record)

    async def aload(self: _Offloading, session_id: str) -> SessionRecord:
        return await self._offload(self.load, session_id)

    async def aappend(
        self: _Offloading,
        session_id: str,
        messages: Sequence[StoredMessage],
        *,
        expected_version: int,
    ) -> int:
        return await self._offload_write(
            self.append, session_id, messages, expected_version=expected_version
        )

    async def areplace(
        self: _Offloading,
        session_id: str,
        index: int,
        message: StoredMessage,
        *,
        expected_version: int,
    ) -> int:
        return await self._offload_write(
            self.replace, session_id, index, message, expected_version=expected_version
        )

    async def atruncate(
        self: _Offloading, session_id: str, length: int, *, expected_version: int
    ) -> int:
        return await self._offload_write(
            self.truncate, session_id, length, expected_version=expected_version
        )

    async def alist_sessions(
        self: _Offloading, limit: int = DEFAULT_LIMIT, ids: Collection[str] | None = None
    ) -> list[SessionInfo]:
        return await self._offload(self.list_sessions, limit, ids)

    async def asearch(
        self: _Offloading, text: str, limit: int = DEFAULT_LIMIT
    ) -> list[SessionInfo]:
        return await self._offload(self.search, text, limit)

    async def adelete(self: _Offloading, session_id: str) -> bool:
        return await self._offload_write(self.delete, session_id)

    async def aclose(self: _Offloading) -> None:
        await self._offload(self.close)


class InlineAsyncMixin(ThreadedAsyncMixin):
    """Async twins that call the sync methods on the loop: for a store whose calls never
    block (memory), where a thread hop would cost more than the call itself."""

    async def _offload(self, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        return call(*args, **kwargs)


def check_limit(limit: int) -> int:
    if not is_integer(limit) or limit < 1:
        raise ValidationError(f"limit must be a positive integer, got {limit!r}", param="limit")
    return limit


def header_changes(
    model: str | None,
    system: str | None,
    params: Mapping[str, Any] | None,
    title: str | None,
) -> dict[str, Any]:
    """The header fields an `update` sets, checked before anything is written.

    `None` leaves a field as it is; `system=""` removes the system prompt; `params`
    replaces the stored params as a whole (the session merges before it calls this).
    """
    changes: dict[str, Any] = {}
    if model is not None:
        if not isinstance(model, str) or not model.strip():
            raise ValidationError("model must be a non-empty string", param="model")
        changes["model"] = model
    if system is not None:
        if not isinstance(system, str):
            raise ValidationError("system must be a string", param="system")
        changes["system"] = system or None
    if params is not None:
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise ValidationError("params must be a mapping of names to values", param="params")
        try:
            orjson.dumps(dict(params))
        except TypeError as exc:
            raise ValidationError(f"params must be JSON values: {exc}", param="params") from None
        changes["params"] = dict(params)
    if title is not None:
        if not isinstance(title, str):
            raise ValidationError("title must be a string", param="title")
        changes["title"] = title
    return changes
