"""What a stored conversation is, and its versioned JSON form.

A session record is a header (id, title, model, system prompt, request params, times and a
version that every write bumps) plus an ordered list of messages. Each message keeps the
wire dict the API sees and the metadata the API never sees: whether it is incomplete (a
streamed answer still growing, or cut off), whether it is a summary standing in for older
turns, the usage of the reply that produced it, its token count once known, its time.

Export wraps a record in `{"format": "dskit-session", "format_version": 1, ...}` so files
written today stay readable when the shape changes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dskit._models import DEFAULT_MODEL
from dskit.client._errors import DSKitError

EXPORT_FORMAT = "dskit-session"
EXPORT_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")
TITLE_LENGTH = 80


class StoreError(DSKitError):
    """A session store could not do what was asked."""


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached (or did not answer in time)."""


class StoreBusyError(StoreError):
    """The store's server is up but this process had to wait too long for it (every
    pooled connection in use, or a reply late): a load problem, not an outage."""


def redact_url(url: str) -> str:
    """A store URL fit to show: its password (if any) replaced by `***`."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class SessionNotFoundError(StoreError, LookupError):
    """No session with this id exists in the store."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session with id {session_id!r}")
        self.session_id = session_id


class SessionConflictError(StoreError):
    """Another writer changed the session since this one last read it.

    The write that failed wrote nothing. Reload the session (its history now includes the
    other writer's messages) and try again: this is how two writers never lose a message.
    Raised by a session's turn, it also says what to do: `question_stored` is whether the
    question of that turn is in the store (then do not send it again) and `record` is the
    session as the store holds it now.
    """

    def __init__(
        self, session_id: str, expected: int, actual: int | None, *,
        record: SessionRecord | None = None, question_stored: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__(
            f"session {session_id!r} was changed by another writer "
            f"(expected version {expected}, found {actual}); reload it and retry"
        )
        self.session_id = session_id
        self.expected = expected
        self.actual = actual
        self.record = record
        self.question_stored = question_stored

    def in_turn(self, record: SessionRecord, *, question_stored: bool) -> SessionConflictError:
        """The same conflict, as a turn reports it (see the class docstring)."""
        return SessionConflictError(
            self.session_id, self.expected, self.actual, record=record,
            question_stored=question_stored,
        )  # fmt: skip


class SessionFormatError(StoreError, ValueError):
    """Stored or imported data does not have the shape of a session."""


def new_session_id() -> str:
    return uuid.uuid4().hex


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise SessionFormatError(f"invalid session data: {what}")


@dataclass(slots=True)
class StoredMessage:
    """One message of a conversation with the metadata the API never sees."""

    message: dict[str, Any]
    incomplete: bool = False
    summary: bool = False
    covers: int = 0
    usage: dict[str, Any] | None = None
    tokens: int | None = None
    created: float = field(default_factory=time.time)

    @property
    def role(self) -> str:
        return str(self.message.get("role", ""))

    @property
    def content(self) -> str:
        return str(self.message.get("content") or "")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message, "created": self.created}
        if self.incomplete:
            data["incomplete"] = True
        if self.summary:
            data["summary"] = True
            data["covers"] = self.covers
        if self.usage is not None:
            data["usage"] = self.usage
        if self.tokens is not None:
            data["tokens"] = self.tokens
        return data

    @classmethod
    def from_dict(cls, data: Any) -> StoredMessage:
        _require(isinstance(data, Mapping), "a message must be an object")
        message = data.get("message")
        _require(isinstance(message, Mapping), "a message needs a 'message' object")
        _require(message.get("role") in ROLES, f"unknown role {message.get('role')!r}")
        usage, tokens = data.get("usage"), data.get("tokens")
        _require(usage is None or isinstance(usage, Mapping), "usage must be an object")
        _require(tokens is None or isinstance(tokens, int), "tokens must be an integer")
        return cls(
            message=dict(message),
            incomplete=bool(data.get("incomplete", False)),
            summary=bool(data.get("summary", False)),
            covers=int(data.get("covers", 0)),
            usage=dict(usage) if usage is not None else None,
            tokens=tokens,
            created=float(data.get("created", 0.0)),
        )


@dataclass(slots=True)
class SessionInfo:
    """A session's header, as listed and searched."""

    id: str
    title: str
    model: str
    created: float
    updated: float
    version: int
    message_count: int


@dataclass(slots=True)
class SessionRecord:
    """A whole stored conversation."""

    id: str = field(default_factory=new_session_id)
    title: str = ""
    model: str = DEFAULT_MODEL
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    version: int = 0
    messages: list[StoredMessage] = field(default_factory=list)

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.id, self.title, self.model, self.created, self.updated, self.version,
            len(self.messages),
        )  # fmt: skip

    def header(self) -> dict[str, Any]:
        """Everything but the messages, as a JSON-ready dict."""
        return {
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "system": self.system,
            "params": self.params,
            "created": self.created,
            "updated": self.updated,
            "version": self.version,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.header(), "messages": [m.to_dict() for m in self.messages]}

    @classmethod
    def from_dict(cls, data: Any) -> SessionRecord:
        _require(isinstance(data, Mapping), "a session must be an object")
        session_id, messages = data.get("id"), data.get("messages", [])
        _require(isinstance(session_id, str) and bool(session_id), "id must be a string")
        _require(isinstance(messages, list), "messages must be a list")
        system, params = data.get("system"), data.get("params") or {}
        _require(system is None or isinstance(system, str), "system must be a string")
        _require(isinstance(params, Mapping), "params must be an object")
        return cls(
            id=session_id,
            title=str(data.get("title") or ""),
            model=str(data.get("model") or DEFAULT_MODEL),
            system=system,
            params=dict(params),
            created=float(data.get("created", 0.0)),
            updated=float(data.get("updated", 0.0)),
            version=int(data.get("version", 0)),
            messages=[StoredMessage.from_dict(m) for m in messages],
        )


def title_from(messages: list[StoredMessage]) -> str:
    """A title from the first user message: its first line, cut to a readable length."""
    for stored in messages:
        if stored.role == "user" and stored.content.strip():
            line = stored.content.strip().splitlines()[0]
            return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"
    return ""


def export_record(record: SessionRecord) -> dict[str, Any]:
    """The versioned, JSON-ready export of a session."""
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "session": record.to_dict(),
    }


def import_record(data: Any) -> SessionRecord:
    """A session from its export; refuses other formats and newer versions clearly."""
    _require(isinstance(data, Mapping), "an export must be a JSON object")
    if data.get("format") != EXPORT_FORMAT:
        raise SessionFormatError(f"not a dskit session export (format={data.get('format')!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1 or version > EXPORT_VERSION:
        raise SessionFormatError(
            f"unsupported session export version {version!r} (this dskit reads 1..{EXPORT_VERSION})"
        )
    return SessionRecord.from_dict(data.get("session"))


def matches(record: SessionRecord, needle: str) -> bool:
    """Whether a session's title or any message content contains `needle` (any case)."""
    lowered = needle.casefold()
    if lowered in record.title.casefold():
        return True
    return any(lowered in m.content.casefold() for m in record.messages)
