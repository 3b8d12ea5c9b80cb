"""Who owns which session: every surface (HTTP, WebSocket, gRPC) checks it here."""

from __future__ import annotations

from typing import Protocol

from dskit.gateway._errors import not_found
from dskit.gateway.backends._keys import KeyBackend
from dskit.store import SessionRecord, SessionStore


class Owned(Protocol):
    """What an ownership check reads: the keys backend (owners) and the session store."""

    @property
    def keys(self) -> KeyBackend: ...
    @property
    def store(self) -> SessionStore: ...


def check_owner(parts: Owned, who: str, session_id: str) -> None:
    """404 unless `who` owns the session (never 403: ids are not confirmed)."""
    if parts.keys.owner(session_id) != who:
        raise not_found()


async def owned_record(parts: Owned, who: str, session_id: str) -> SessionRecord:
    """The session if `who` owns it; 404 otherwise."""
    check_owner(parts, who, session_id)
    return await parts.store.aload(session_id)
