"""Micro-benchmark of dskit's SSE decoder: the hot path and the adversarial (linearity) cases.

    .venv/bin/python bench/sse_decode.py

Prints one table: microseconds per event for DeepSeek-shaped chunks, and time per MB for
hostile chunkings at size N and 4N (a linear decoder shows a ratio near 4, a quadratic one
near 16; for the fast 4 KB case, allocator and page-fault noise on the small run can skew
it). Numbers are CPU time of this process, best of several rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dskit.client._sse import SSEDecoder

CHUNK_JSON = (
    b'{"id":"2f6c1f8e-8a7b-4b1e-9d65-1c3f1b0a9e77","object":"chat.completion.chunk",'
    b'"created":1735689600,"model":"deepseek-chat","system_fingerprint":"fp_f1afce2943",'
    b'"choices":[{"index":0,"delta":{"content":" the"},"logprobs":null,'
    b'"finish_reason":null}],"usage":null}'
)
EVENT = b"data: " + CHUNK_JSON + b"\n\n"


def best_of(rounds: int, run: Callable[[], object]) -> float:
    """Best CPU time of `rounds` runs: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def feed_all(pieces: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        decoder = SSEDecoder(max_event_size=64 * 1024 * 1024)
        feed = decoder.feed
        for piece in pieces:
            feed(piece)
        return decoder.close()

    return run


def per_event_row(label: str, pieces: list[bytes], n_events: int) -> tuple[str, str]:
    seconds = best_of(5, feed_all(pieces))
    return label, f"{seconds / n_events * 1e6:8.2f} us/event"


def hot_path_rows() -> list[tuple[str, str]]:
    n = 50_000
    one_per_chunk = [EVENT] * n
    batched = [EVENT * 16] * (n // 16)
    crlf = [EVENT.replace(b"\n", b"\r\n")] * n
    keepalive = [b": keep-alive\n\n" + EVENT] * n
    split_json = [EVENT[:150], EVENT[150:]] * n
    return [
        (f"event size ({len(EVENT)} bytes)", f"{len(EVENT):8d} bytes"),
        per_event_row("1 event per chunk (LF)", one_per_chunk, n),
        per_event_row("16 events per chunk", batched, n // 16 * 16),
        per_event_row("1 event per chunk (CRLF)", crlf, n),
        per_event_row("keep-alive comment + event", keepalive, n),
        per_event_row("event split in 2 chunks", split_json, n),
    ]


def scaling_row(label: str, make: Callable[[int], list[bytes]], size: int) -> tuple[str, str]:
    small = best_of(3, feed_all(make(size)))
    large = best_of(3, feed_all(make(4 * size)))
    per_mb = large / (4 * size / 1e6) * 1e3
    return label, f"{per_mb:8.1f} ms/MB at 4N  (time 4N/N = {large / small:4.1f})"


def one_line(size: int, piece: int) -> list[bytes]:
    stream = b"data: " + b"x" * size + b"\n\n"
    return [stream[i : i + piece] for i in range(0, len(stream), piece)]


def tiny_lines(size: int) -> list[bytes]:
    return [b"data\n" * (size // 5) + b"\n"]


def bytewise_events(size: int) -> list[bytes]:
    stream = EVENT * (size // len(EVENT))
    return [stream[i : i + 1] for i in range(len(stream))]


def scaling_rows() -> list[tuple[str, str]]:
    return [
        scaling_row("one line, 1-byte feeds, 1 MB", lambda n: one_line(n, 1), 250_000),
        scaling_row("one line, 4 KB feeds, 32 MB", lambda n: one_line(n, 4096), 8_000_000),
        scaling_row("tiny lines, one feed, 4 MB", tiny_lines, 1_000_000),
        scaling_row("events, 1-byte feeds, 1 MB", bytewise_events, 250_000),
    ]


def main() -> None:
    rows = hot_path_rows() + scaling_rows()
    width = max(len(label) for label, _ in rows)
    print(f"{'case':<{width}}  result")
    print(f"{'-' * width}  {'-' * 44}")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
