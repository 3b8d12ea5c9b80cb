"""Incremental decoder for `text/event-stream`, exact to WHATWG HTML "Server-sent events".

Why our own decoder: it is the client's hot path (a few microseconds per typical
`data: {json}` event) and it has to stay linear-time on hostile input, which the generic
decoders built for the old httpx do not promise.

How it stays linear and fast:

- Only the newly fed chunk is searched for line endings. The incomplete last line waits in
  a bytearray that is appended to but never searched again, so a 10 MB line fed one byte
  at a time costs 10 M appends, not 10 M rescans.
- Lines are split and classified as bytes with C-level `bytes` methods. This is exact:
  CR, LF, `:` and space are ASCII, and a UTF-8 decoder never swallows an ASCII byte (not
  even after an invalid lead byte), so decoding each piece with `errors="replace"` gives
  the same characters as decoding the whole stream first, as the spec does. Data lines
  stay bytes until the event is dispatched: one decode per event.
- CRLF and lone CR are normalised to LF per chunk with `bytes.replace`; a CR that ends a
  chunk is remembered so that an LF starting the next chunk is not taken for a second
  line ending.

Memory is bounded by `max_event_size`: the event being built (its data buffer, values
joined with LF) plus the current line may not exceed it, whatever the chunking; past it
`feed()` raises `SSEError` and the decoder refuses further input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn, TypeAlias

__all__ = ["SSEComment", "SSEDecoder", "SSEError", "SSEItem", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"
_DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024


@dataclass(slots=True, frozen=True)
class ServerSentEvent:
    """One dispatched event, as a browser's `MessageEvent` would see it.

    `id` is the stream's last event ID *after* this event (it persists across events, as
    the spec's reconnection logic needs); `retry` is the reconnection time (ms) set by the
    latest valid `retry` field so far. Both are None until the stream sets them.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


@dataclass(slots=True, frozen=True)
class SSEComment:
    """A comment line (`: keep-alive`), reported so callers can show "still waiting"."""

    text: str


SSEItem: TypeAlias = ServerSentEvent | SSEComment


class SSEError(ValueError):
    """The stream broke the decoder's limits (an event over `max_event_size`)."""


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _field_value(raw: bytes, colon: int) -> bytes:
    """The value after the first colon, minus one leading space (spec: only one)."""
    value = raw[colon + 1 :]
    return value[1:] if value[:1] == b" " else value


def _as_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes | bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"SSEDecoder.feed() takes bytes, not {type(chunk).__name__}")


def _check_max_event_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_event_size must be a positive int (bytes), got {value!r}")
    return value


class SSEDecoder:
    """Turns the bytes of one event stream, in chunks of any size, into events and comments.

    Pure and synchronous: no I/O, so the sync and async clients share it. Call `feed()` for
    every chunk read and `close()` at end of stream; per spec an event without its closing
    blank line is never dispatched, so a truncated stream loses only its incomplete tail.
    """

    __slots__ = (
        "_after_cr",
        "_at_start",
        "_closed",
        "_data",
        "_data_size",
        "_event_type",
        "_last_id",
        "_line",
        "_max",
        "_retry",
    )

    def __init__(self, max_event_size: int = _DEFAULT_MAX_EVENT_SIZE) -> None:
        self._max = _check_max_event_size(max_event_size)
        self._line = bytearray()  # the incomplete last line, never searched twice
        self._data: list[bytes] = []  # data values of the event being built
        self._data_size = 0  # len of those values joined with LF, plus the final LF
        self._event_type = b""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._at_start = True  # the BOM check is still pending
        self._after_cr = False  # the last chunk ended with CR: skip one leading LF
        self._closed = False

    def __repr__(self) -> str:
        return f"<SSEDecoder pending_bytes={self.pending_bytes} max_event_size={self._max}>"

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the incomplete line plus the data of the incomplete event."""
        return len(self._line) + self._data_size

    def feed(self, chunk: bytes) -> list[SSEItem]:
        """Decode one chunk; return the events and comments it completed, in order."""
        if type(chunk) is not bytes:
            chunk = _as_bytes(chunk)
        if self._closed:
            raise SSEError("SSEDecoder.feed() called after close() or after an SSEError")
        if self._at_start:
            chunk = self._strip_bom(chunk)
        if self._after_cr and chunk:
            self._after_cr = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        if 13 in chunk:  # int membership is a memchr: several times faster than b"\r" in
            self._after_cr = chunk[-1] == 13
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        tail = lines.pop()
        out = self._process(lines) if lines else []
        if tail:
            self._hold(tail)
        return out

    def whole_data(self, chunk: bytes) -> list[bytes] | None:
        """The data of each event in `chunk` when it is nothing but complete one-line
        `data: ` events (LF only) and the decoder holds nothing: what `feed()` would
        dispatch, for a relay that passes such events on as they came. Those events set
        neither id nor retry, so the decoder's state is what `feed()` would leave.
        None: anything else, to be given to `feed()`."""
        if (
            self._line or self._data or self._event_type or self._at_start or self._after_cr
            or self._closed or type(chunk) is not bytes or len(chunk) > self._max
            or 13 in chunk or not chunk.endswith(b"\n\n")
        ):  # fmt: skip
            return None
        if chunk.find(b"\n") == len(chunk) - 2:  # one event: the usual read
            return [chunk[6:-2]] if chunk.startswith(b"data: ") else None
        events = chunk[:-2].split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: ") or 10 in event:
                return None
        return [event[6:] for event in events]

    def close(self) -> list[SSEItem]:
        """End of stream: drop the incomplete line and undispatched event, as the spec says.

        Always returns an empty list today; it returns a list so that callers treat the end
        of a stream like any other chunk.
        """
        self._closed = True
        self._reset_buffers()
        return []

    def _strip_bom(self, chunk: bytes) -> bytes:
        """Strip one UTF-8 BOM at the very start, even when it arrives split across chunks."""
        head = bytes(self._line) + chunk
        if len(head) < 3 and _BOM.startswith(head):
            self._line[:] = head  # too short to decide yet
            return b""
        self._at_start = False
        self._line.clear()
        return head[3:] if head.startswith(_BOM) else head

    def _hold(self, tail: bytes) -> None:
        """Keep the incomplete last line, within the size limit."""
        if len(self._line) + len(tail) + self._data_size > self._max:
            self._fail(len(self._line) + len(tail) + self._data_size)
        self._line += tail

    def _process(self, lines: list[bytes]) -> list[SSEItem]:
        """Interpret complete lines (terminators removed); the first may continue `_line`."""
        if self._line:
            self._line += lines[0]
            lines[0] = bytes(self._line)
            self._line.clear()
        out: list[SSEItem] = []
        limit = self._max
        for raw in lines:
            if not raw:
                if self._data:
                    out.append(self._dispatch())
                else:
                    self._event_type = b""
            elif self._data_size + len(raw) > limit:
                self._fail(self._data_size + len(raw))
            elif raw.startswith(b"data: "):  # the hot path: one data line per event
                value = raw[6:]
                self._data.append(value)
                self._data_size += len(value) + 1
            elif raw[0] == 58:  # ":" starts a comment
                out.append(SSEComment(_decode(_field_value(raw, 0))))
            else:
                self._field(raw)
        return out

    def _field(self, raw: bytes) -> None:
        """Process one field line other than `data:` (spec: "process the field")."""
        colon = raw.find(b":")
        if colon < 0:
            name, value = raw, b""
        else:
            name, value = raw[:colon], _field_value(raw, colon)
        if name == b"data":
            self._data.append(value)
            self._data_size += len(value) + 1
        elif name == b"event":
            self._event_type = value
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = _decode(value)
        elif name == b"retry":
            self._set_retry(value)

    def _set_retry(self, value: bytes) -> None:
        """Accept only ASCII digits (`bytes.isdigit` is ASCII-only and false for b"")."""
        if not value.isdigit():
            return
        try:
            self._retry = int(value.lstrip(b"0") or b"0")
        except ValueError:  # more digits than int() will parse: a nonsense delay, ignored
            return

    def _dispatch(self) -> ServerSentEvent:
        data = self._data
        event = ServerSentEvent(
            (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace"),
            _decode(self._event_type) if self._event_type else "message",
            self._last_id,
            self._retry,
        )
        self._data = []
        self._data_size = 0
        self._event_type = b""
        return event

    def _reset_buffers(self) -> None:
        self._line = bytearray()
        self._data = []
        self._data_size = 0
        self._event_type = b""

    def _fail(self, size: int) -> NoReturn:
        """Refuse an oversized event; free its buffers and refuse any further input."""
        self._closed = True
        self._reset_buffers()
        raise SSEError(
            f"server-sent event exceeds max_event_size={self._max} bytes "
            f"(at least {size} bytes of data and current line)"
        )
