"""The incremental SSE decoder against the WHATWG rules, a literal spec oracle and hypothesis.

`reference_decode` below is a deliberately naive transcription of the spec ("Parsing an
event stream" + "Interpreting an event stream"): decode everything, split lines with a
regex, walk the lines. The real decoder must agree with it for any bytes and any chunking.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dskit.client._sse import ServerSentEvent, SSEComment, SSEDecoder, SSEError, SSEItem

BOM = b"\xef\xbb\xbf"


def decode_all(stream: bytes, **kwargs: int) -> list[SSEItem]:
    decoder = SSEDecoder(**kwargs)
    return decoder.feed(stream) + decoder.close()


def decode_pieces(pieces: list[bytes], **kwargs: int) -> list[SSEItem]:
    decoder = SSEDecoder(**kwargs)
    items: list[SSEItem] = []
    for piece in pieces:
        items += decoder.feed(piece)
    return items + decoder.close()


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def events(items: list[SSEItem]) -> list[ServerSentEvent]:
    return [item for item in items if isinstance(item, ServerSentEvent)]


# --- the oracle: the spec, read literally ------------------------------------------------


def reference_decode(stream: bytes) -> list[SSEItem]:
    """WHATWG: UTF-8 decode (one BOM stripped), split at CRLF|CR|LF, interpret each line."""
    text = stream.decode("utf-8-sig", "replace")
    lines = re.split("\r\n|\r|\n", text)[:-1]  # the last piece has no line ending: dropped
    out: list[SSEItem] = []
    data, event_type, last_id, retry = "", "", None, None
    for line in lines:
        if line == "":
            if data:
                out.append(ServerSentEvent(data[:-1], event_type or "message", last_id, retry))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            comment = line[1:]
            out.append(SSEComment(comment[1:] if comment.startswith(" ") else comment))
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return out


# --- the spec's own examples -------------------------------------------------------------


def test_whatwg_stock_example_joins_data_lines() -> None:
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert decode_all(stream) == [ServerSentEvent("YHOO\n+2\n10")]


def test_whatwg_example_ids_and_unterminated_last_event() -> None:
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n"
    )
    assert decode_all(stream) == [
        SSEComment("test stream"),
        ServerSentEvent("first event", id="1"),
        ServerSentEvent("second event", id=""),
    ]


def test_whatwg_example_empty_data_lines() -> None:
    assert decode_all(b"data\n\ndata\ndata\n\ndata:") == [
        ServerSentEvent(""),
        ServerSentEvent("\n"),
    ]


def test_whatwg_example_space_after_colon_is_optional() -> None:
    assert decode_all(b"data:test\n\ndata: test\n\n") == [ServerSentEvent("test")] * 2


# --- line endings ------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending(eol: bytes) -> None:
    stream = b"event: add" + eol + b"data: a" + eol + b"data: b" + eol + eol
    assert decode_all(stream) == [ServerSentEvent("a\nb", event="add")]


def test_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\r"
    assert decode_all(stream) == [ServerSentEvent("a\nb\nc"), ServerSentEvent("d")]


def test_crlf_split_across_feeds_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []  # no extra blank line: no dispatch yet
    assert decoder.feed(b"") == []  # an empty chunk keeps the pending CR in mind
    assert decoder.feed(b"\n\r") == [ServerSentEvent("a\nb")]
    assert decoder.feed(b"\n") == []


def test_cr_then_cr_is_two_line_endings_across_feeds() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [ServerSentEvent("a")]


# --- BOM ---------------------------------------------------------------------------------


def test_leading_bom_is_stripped() -> None:
    assert decode_all(BOM + b"data: x\n\n") == [ServerSentEvent("x")]


def test_bom_split_byte_by_byte_is_stripped() -> None:
    assert decode_pieces([b"\xef", b"", b"\xbb", b"\xbf", b"data: x\n\n"]) == [ServerSentEvent("x")]


def test_only_the_first_bom_is_stripped() -> None:
    # The second BOM becomes part of the field name "\ufeffdata", an unknown field.
    assert decode_all(BOM + BOM + b"data: x\n\ndata: y\n\n") == [ServerSentEvent("y")]


def test_bom_after_the_start_is_data() -> None:
    stream = b"data: a\n\n" + BOM + b"data: b\n\ndata: " + BOM + b"c\n\n"
    assert decode_all(stream) == [ServerSentEvent("a"), ServerSentEvent("\ufeffc")]


def test_partial_bom_at_start_is_not_stripped() -> None:
    stream = b"\xef\xbbdata: x\n\ndata: y\n\n"
    assert decode_pieces([stream[:1], stream[1:]]) == [ServerSentEvent("y")]
    assert decode_all(stream) == reference_decode(stream)


# --- UTF-8 -------------------------------------------------------------------------------


def test_multibyte_characters_split_anywhere() -> None:
    stream = "data: 你好, €uro 🙂\nevent: 事件\nid: ключ\n\n".encode()
    expected = [ServerSentEvent("你好, €uro 🙂", event="事件", id="ключ")]
    for cut in range(len(stream) + 1):
        assert decode_pieces([stream[:cut], stream[cut:]]) == expected
    assert decode_pieces([bytes([b]) for b in stream]) == expected


def test_invalid_utf8_is_replaced_like_the_spec_decoder() -> None:
    stream = b"data: a\xffb\xe2\x82\ndata: \xed\xa0\x80\n\n"
    assert decode_all(stream) == [ServerSentEvent("a\ufffdb\ufffd\n\ufffd\ufffd\ufffd")]


def test_truncated_sequence_before_ascii_keeps_the_ascii() -> None:
    assert decode_all(b"data: \xe2:x\n\n") == [ServerSentEvent("\ufffd:x")]


# --- fields ------------------------------------------------------------------------------


def test_event_type_applies_to_one_event_only() -> None:
    stream = b"event: ping\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n"
    assert decode_all(stream) == [
        ServerSentEvent("1", event="ping"),
        ServerSentEvent("2"),
        ServerSentEvent("3"),
    ]


def test_blank_line_without_data_dispatches_nothing_but_resets_type() -> None:
    stream = b"event: lost\n\ndata: kept\n\n"
    assert decode_all(stream) == [ServerSentEvent("kept")]


def test_id_persists_and_is_set_even_by_an_event_without_data() -> None:
    stream = b"id: 7\ndata: a\n\ndata: b\n\nid: 8\n\ndata: c\n\nid\ndata: d\n\n"
    assert [e.id for e in events(decode_all(stream))] == ["7", "7", "8", ""]


def test_id_containing_nul_is_ignored() -> None:
    stream = b"id: 1\n\nid: a\x00b\ndata: x\n\n"
    assert decode_all(stream) == [ServerSentEvent("x", id="1")]


def test_id_is_none_until_set() -> None:
    assert decode_all(b"data: x\n\n") == [ServerSentEvent("x", id=None)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"3000", 3000),
        (b" 250", 250),  # the one optional space
        (b"0", 0),
        (b"00017", 17),
        (b"0" * 10_000 + b"5", 5),  # leading zeros do not hit int()'s digit limit
        (b"", None),
        (b"  250", None),
        (b"12a", None),
        (b"-5", None),
        (b"1.5", None),
        ("١٢".encode(), None),  # non-ASCII digits
        (b"9" * 100_000, None),  # beyond int()'s digit limit: ignored, not a crash
    ],
)
def test_retry_accepts_only_ascii_digits(value: bytes, expected: int | None) -> None:
    (event,) = decode_all(b"retry:" + value + b"\ndata: x\n\n")
    assert isinstance(event, ServerSentEvent)
    assert event.retry == expected


def test_retry_persists_until_replaced_by_a_valid_value() -> None:
    stream = b"retry: 10\ndata: a\n\ndata: b\n\nretry: x\nretry: 20\ndata: c\n\nretry: no\n"
    stream += b"data: d\n\n"
    assert [e.retry for e in events(decode_all(stream))] == [10, 10, 20, 20]


def test_field_without_colon_has_empty_value() -> None:
    assert decode_all(b"data\nevent\nid\n\n") == [ServerSentEvent("", id="")]


def test_only_one_leading_space_is_removed() -> None:
    assert decode_all(b"data:  two\nevent:  x\n\n") == [ServerSentEvent(" two", event=" x")]


def test_unknown_fields_and_case_variants_are_ignored() -> None:
    stream = b"Data: no\nDATA\ndata : no\nfoo: bar\n data: no\ndata: yes\n\n"
    assert decode_all(stream) == [ServerSentEvent("yes")]


def test_colons_after_the_first_belong_to_the_value() -> None:
    stream = b'data: {"a": "b:c"}\nevent:a:b\n\n'
    assert decode_all(stream) == [ServerSentEvent('{"a": "b:c"}', event="a:b")]


# --- comments ----------------------------------------------------------------------------


def test_comments_are_reported_in_order_without_interrupting_an_event() -> None:
    stream = b": keep-alive\ndata: a\n:no space\n:  two\n:\ndata: b\n\n"
    assert decode_all(stream) == [
        SSEComment("keep-alive"),
        SSEComment("no space"),
        SSEComment(" two"),
        SSEComment(""),
        ServerSentEvent("a\nb"),
    ]


def test_deepseek_keep_alives_then_chunks_then_done() -> None:
    chunk = b'{"id":"x","choices":[{"index":0,"delta":{"content":"Hi"}}]}'
    stream = b": keep-alive\n\n: keep-alive\n\ndata: " + chunk + b"\n\ndata: [DONE]\n\n"
    assert decode_all(stream) == [
        SSEComment("keep-alive"),
        SSEComment("keep-alive"),
        ServerSentEvent(chunk.decode()),
        ServerSentEvent("[DONE]"),
    ]


# --- end of stream -----------------------------------------------------------------------


def test_close_drops_an_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: done\n\ndata: cut\n") == [ServerSentEvent("done")]
    assert decoder.pending_bytes == len(b"cut\n")
    assert decoder.close() == []
    assert decoder.pending_bytes == 0


def test_close_drops_an_incomplete_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\ndata: partial") == [ServerSentEvent("x")]
    assert decoder.pending_bytes == len(b"data: partial")
    assert decoder.close() == []


def test_feed_after_close_is_refused() -> None:
    decoder = SSEDecoder()
    decoder.close()
    with pytest.raises(SSEError, match="after close"):
        decoder.feed(b"data: x\n\n")


def test_pending_bytes_counts_line_and_data() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: abc\ndata: de")
    assert decoder.pending_bytes == len(b"abc\n") + len(b"data: de")
    decoder.feed(b"\n\n")
    assert decoder.pending_bytes == 0


# --- input validation and limits ---------------------------------------------------------


def test_bytes_like_chunks_are_tolerated() -> None:
    # Typed as bytes (what httpx2 yields), but a bytearray or memoryview is copied, not refused.
    decoder = SSEDecoder()
    assert decoder.feed(bytearray(b"data: a\n")) == []  # type: ignore[arg-type]
    assert decoder.feed(memoryview(b"\n")) == [ServerSentEvent("a")]  # type: ignore[arg-type]


def test_str_chunk_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="takes bytes, not str"):
        SSEDecoder().feed("data: x\n\n")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "16"])
def test_bad_max_event_size_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="max_event_size"):
        SSEDecoder(max_event_size=bad)  # type: ignore[arg-type]


def test_data_accumulated_over_the_limit_raises_naming_it() -> None:
    decoder = SSEDecoder(max_event_size=1000)
    line = b"data: " + b"x" * 94 + b"\n"  # 95 bytes of data buffer per line
    assert decoder.feed(line * 10) == []
    with pytest.raises(SSEError, match="max_event_size=1000"):
        decoder.feed(line)
    assert decoder.pending_bytes == 0  # buffers were freed
    with pytest.raises(SSEError):
        decoder.feed(b"\n")


def test_a_long_incomplete_line_raises_before_buffering_it() -> None:
    decoder = SSEDecoder(max_event_size=4096)
    decoder.feed(b"data: " + b"x" * 4000)
    with pytest.raises(SSEError, match="4096"):
        decoder.feed(b"y" * 100)
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize("line", [b": " + b"c" * 5000, b"event: " + b"e" * 5000])
def test_an_oversized_non_data_line_raises_whatever_the_chunking(line: bytes) -> None:
    stream = b"data: x\n" + line + b"\n\n"
    with pytest.raises(SSEError):
        decode_all(stream, max_event_size=4096)
    with pytest.raises(SSEError):
        decode_pieces([stream[i : i + 7] for i in range(0, len(stream), 7)], max_event_size=4096)


def test_an_event_exactly_at_the_limit_passes() -> None:
    data = b"z" * 99
    stream = b"data:" + data + b"\n\n"  # the line is 104 bytes; the data buffer 100
    assert decode_all(stream, max_event_size=104) == [ServerSentEvent(data.decode())]
    with pytest.raises(SSEError):
        decode_all(stream, max_event_size=103)


def test_the_limit_is_per_event_not_per_stream() -> None:
    stream = b"data: " + b"a" * 50 + b"\n\n"
    assert len(decode_all(stream * 1000, max_event_size=100)) == 1000


# --- adversarial sizes (linear time; real numbers live in bench/sse_decode.py) -----------


def test_long_line_fed_one_byte_at_a_time() -> None:
    # Quadratic re-scanning would take minutes here; linear code takes well under a second.
    decoder = SSEDecoder()
    stream = b"data: " + b"x" * 200_000 + b"\n\n"
    items: list[SSEItem] = []
    for i in range(len(stream)):
        items += decoder.feed(stream[i : i + 1])
    assert items == [ServerSentEvent("x" * 200_000)]


def test_ten_megabyte_line_in_4k_pieces() -> None:
    payload = b"y" * (10 * 1024 * 1024)
    stream = b"data: " + payload + b"\r\n\r\n"
    pieces = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    (event,) = decode_pieces(pieces)
    assert isinstance(event, ServerSentEvent)
    assert len(event.data) == len(payload)


def test_many_tiny_lines_in_one_event_and_one_feed() -> None:
    (event,) = decode_all(b"data\n" * 200_000 + b"\n")
    assert isinstance(event, ServerSentEvent)
    assert event.data == "\n" * 199_999


def test_long_stream_of_events_fed_one_byte_at_a_time() -> None:
    stream = b"".join(b"id: %d\ndata: %d\r\n\r\n" % (i, i) for i in range(5_000))
    items = decode_pieces([stream[i : i + 1] for i in range(len(stream))])
    assert items == [ServerSentEvent(str(i), id=str(i)) for i in range(5_000)]


# --- properties --------------------------------------------------------------------------

SOUP = [
    b"data", b"data:", b"event", b"id", b"retry", b"foo", b":", b": ", b" ", b"x", b"42",
    b"\n", b"\r", b"\r\n", b"\x00", BOM, b"\xe2\x82\xac", b"\xe2\x82", b"\xff", b"\xc3",
]  # fmt: skip


@st.composite
def split_stream(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return split_at(stream, cuts)


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.sampled_from(SOUP), max_size=60), data=st.data())
def test_any_bytes_any_chunking_match_the_spec_oracle(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    expected = reference_decode(stream)
    assert decode_all(stream) == expected
    assert decode_pieces(data.draw(split_stream(stream))) == expected
    assert decode_pieces([stream[i : i + 1] for i in range(len(stream))]) == expected


@dataclass(frozen=True)
class Spec:
    """An event as a server would write it, with the fields it chose to send."""

    lines: tuple[str, ...]
    event: str | None
    id: str | None
    retry: int | None
    comment: str | None


TEXT = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=12)
SPECS = st.builds(
    Spec,
    lines=st.lists(TEXT, max_size=3).map(tuple),
    event=st.none() | TEXT,
    id=st.none() | TEXT.filter(lambda s: "\0" not in s),
    retry=st.none() | st.integers(0, 10**12),
    comment=st.none() | TEXT,
)


def encode(specs: list[Spec], eols: list[bytes]) -> bytes:
    lines: list[str] = []
    for spec in specs:
        lines += [f": {spec.comment}"] if spec.comment is not None else []
        lines += [f"event: {spec.event}"] if spec.event is not None else []
        lines += [f"id: {spec.id}"] if spec.id is not None else []
        lines += [f"retry: {spec.retry}"] if spec.retry is not None else []
        lines += [f"data: {line}" for line in spec.lines] + [""]
    out, previous = b"", b""
    for i, line in enumerate(lines):
        eol = eols[i % len(eols)]
        if previous == b"\r" and not line and eol == b"\n":
            eol = b"\r"  # CR then an LF-ended blank line would read as one CRLF
        out += line.encode() + eol
        previous = eol
    return out


def expected_items(specs: list[Spec]) -> list[SSEItem]:
    out: list[SSEItem] = []
    last_id: str | None = None
    retry: int | None = None
    for spec in specs:
        if spec.comment is not None:
            out.append(SSEComment(spec.comment))
        last_id = spec.id if spec.id is not None else last_id
        retry = spec.retry if spec.retry is not None else retry
        if spec.lines:
            event = spec.event or "message"
            out.append(ServerSentEvent("\n".join(spec.lines), event, last_id, retry))
    return out


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(SPECS, max_size=8),
    eols=st.lists(st.sampled_from([b"\n", b"\r", b"\r\n"]), min_size=1, max_size=4),
    bom=st.booleans(),
    data=st.data(),
)
def test_encoded_events_decode_back_under_any_endings_and_splits(
    specs: list[Spec], eols: list[bytes], bom: bool, data: st.DataObject
) -> None:
    stream = (BOM if bom else b"") + encode(specs, eols)
    expected = expected_items(specs)
    assert decode_all(stream) == expected
    assert decode_pieces(data.draw(split_stream(stream))) == expected


# --- whole_data: the relay's fast path -----------------------------------------------------

EVENT_PIECES = [
    b'data: {"a":1}\n\n', b"data: x\n\n", b": keep-alive\n\n", b"data: a\ndata: b\n\n",
    b"data: cr\r\n\r\n", b"event: e\ndata: t\n\n", b"id: 7\n\n", b"data:tight\n\n",
    b"retry: 50\n\n", b"\n",
]  # fmt: skip


@settings(max_examples=300)
@given(
    pieces=st.lists(st.sampled_from(EVENT_PIECES), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_whole_data_then_feed_decodes_like_feed_alone(pieces: list[bytes], cuts: list[int]) -> None:
    """A reader that takes `whole_data` when it answers and `feed` otherwise sees the same
    data, ids and retries as one that only feeds: the fast path leaves the state as is."""
    stream = b"".join(pieces)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    plain, fast = SSEDecoder(), SSEDecoder()
    expected: list[str] = []
    seen: list[str] = []
    for chunk in chunks:
        expected += [i.data for i in plain.feed(chunk) if isinstance(i, ServerSentEvent)]
        whole = fast.whole_data(chunk)
        if whole is None:
            seen += [i.data for i in fast.feed(chunk) if isinstance(i, ServerSentEvent)]
        else:
            seen += [data.decode() for data in whole]
        assert fast.pending_bytes == plain.pending_bytes
    assert seen == expected
    probe = b"\n\ndata: probe\n\n"  # the state left behind: the same id and retry
    assert fast.feed(probe) == plain.feed(probe)


def test_whole_data_takes_only_complete_one_line_data_events() -> None:
    decoder = SSEDecoder()
    first = b'data: {"n":1}\n\n'
    assert decoder.whole_data(first) is None  # the very first read decides the BOM: feed
    decoder.feed(first)
    assert decoder.whole_data(b'data: {"n":2}\n\ndata: {"n":3}\n\n') == [b'{"n":2}', b'{"n":3}']
    for refused in (b"data: a\r\n\r\n", b"data: a\ndata: b\n\n", b": keep-alive\n\n",
                    b"data: a\n", b"data:a\n\n", b"data: a\n\n\n\ndata: b\n\n",
                    b"event: x\ndata: a\n\n"):  # fmt: skip
        assert decoder.whole_data(refused) is None, refused
    decoder.feed(b"data: half")
    assert decoder.whole_data(b'data: {"n":4}\n\n') is None  # a line is pending


def test_whole_data_refuses_what_feed_would_reject_for_size() -> None:
    decoder = SSEDecoder(max_event_size=16)
    decoder.feed(b": start\n\n")
    assert decoder.whole_data(b"data: " + b"x" * 20 + b"\n\n") is None
