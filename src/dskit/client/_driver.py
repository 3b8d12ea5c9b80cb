"""Sans-I/O drivers: every decision of a call, none of its I/O.

A shell asks a driver for the next request, hands it status, headers and body bytes, and
on any failure asks `recover()` how long to wait before the next attempt (or gets the
final exception raised). So retry timing, resume planning, deadlines, decoding and
accumulation exist once, for both the sync and the async client.

Before any output a failed attempt is *retried* (same request, backoff with jitter).
After partial output a broken stream is *resumed*: the next request asks the beta Chat
Prefix Completion endpoint to continue the text received so far, so the caller's
iteration goes on after a `Resumed` event and never sees a token twice or loses one.

A driver given a `Seed` (the start of an answer the caller already has) begins where a
resume would: its first request is the prefix completion. The seed yields no events;
until the stream delivers something of its own, a failure is retried, not resumed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from dskit._validate import thinking_enabled
from dskit.client._accumulate import Accumulator, Seed
from dskit.client._config import Pace
from dskit.client._core import (
    CallOptions,
    ClientCore,
    HTTPRequest,
    Timeouts,
    encode,
    error_from_status,
)
from dskit.client._core import transport_error as to_api_error
from dskit.client._errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    IncompleteStreamError,
)
from dskit.client._sse import ServerSentEvent, SSEComment, SSEDecoder, SSEError
from dskit.client._types import ChatResult, Done, KeepAlive, Resumed, Retrying, StreamEvent

logger = logging.getLogger("dskit.client")
# finish reasons of an answer the server stopped on its side: continued, like a break
CUT_BY_SERVER = {
    "insufficient_system_resource": "The server cut the answer for lack of capacity",
    "aborted": "The server aborted the answer",
}
KEEP_ALIVE = KeepAlive()
PLAIN_KEYS = frozenset(("role", "content", "reasoning_content"))


def prefix_message(body: Mapping[str, Any], content: str, reasoning: str | None) -> dict[str, Any]:
    """The assistant message that asks Chat Prefix Completion to continue an answer.

    In thinking mode an answer cut before any content continues its reasoning, so that
    goes back too (`body` is the request the answer was asked with).
    Used by the client's own resume and by the gateway's takeover of orphaned answers.
    """
    prefix: dict[str, Any] = {"role": "assistant", "content": content, "prefix": True}
    if thinking_enabled(body) and reasoning and not content:
        prefix["reasoning_content"] = reasoning
    return prefix


def plain_delta(chunk: Any) -> bool:
    """A mid-answer chunk of text for choice 0 only: no finish, usage, error, tool call
    or other choice (a relay writes those itself), and nothing `Accumulator.add` could
    fail on, so a read of such chunks is digested whole or not at all."""
    if type(chunk) is not dict or "error" in chunk or chunk.get("usage"):
        return False
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1:
        return False
    choice = choices[0]
    if type(choice) is not dict or choice.get("index", 0) != 0 or choice.get("finish_reason"):
        return False
    delta = choice.get("delta")
    if type(delta) is not dict:
        return False
    for key, value in delta.items():
        if key not in PLAIN_KEYS or not (value is None or type(value) is str):
            return False
    return True


class StreamBroken(APIConnectionError):
    """The stream ended or was cut before its answer was complete."""


class Attempts:
    """Retry bookkeeping shared by both drivers: counts, backoff, the overall deadline."""

    def __init__(self, core: ClientCore, options: CallOptions) -> None:
        self.core = core
        self.options = options
        self.retries = 0
        self.started = core.clock.now()

    def remaining(self) -> float | None:
        total = self.options.timeout.total
        return None if total is None else total - (self.core.clock.now() - self.started)

    def retryable(self, error: APIError) -> bool:
        if isinstance(error, APIStatusError):
            return self.options.retry.retries_status(error.status_code)
        return isinstance(error, APIConnectionError) and error.retryable

    def backoff(self, error: APIError, number: int) -> float:
        """The delay before attempt `number` + 1; raises when it would pass the deadline."""
        retry_after = error.retry_after if isinstance(error, APIStatusError) else None
        delay = self.options.retry.delay(number, retry_after)
        left = self.remaining()
        if left is not None and delay >= left:
            raise APITimeoutError(
                f"Total timeout of {self.options.timeout.total}s would pass before the next "
                f"attempt (last error: {error})"
            ) from error
        return delay

    def next_retry(self, error: APIError) -> float:
        """Delay before retrying a call that produced no output, or raise `error`."""
        if not self.retryable(error) or self.retries >= self.options.retry.max_retries:
            raise error
        delay = self.backoff(error, self.retries)
        self.retries += 1
        logger.warning("retry %d in %.2fs after: %s", self.retries, delay, error)
        return delay

    def http_timeouts(self, *, idle: float | None = None) -> Timeouts:
        """(connect, read) for the next request, bounded by what is left of the deadline."""
        timeout = self.options.timeout
        read = _least(timeout.read, idle)
        left = self.remaining()
        if left is not None:
            left = max(left, 0.001)
            return _least(timeout.connect, left), _least(read, left)
        return timeout.connect, read


def _least(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


class _Pacer:
    """A token bucket over delivered characters."""

    def __init__(self, pace: Pace, now: float) -> None:
        self.rate = pace.chars_per_second
        self.capacity = float(pace.burst)
        self.tokens = self.capacity
        self.stamp = now

    def delay(self, chars: int, now: float) -> float:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= chars
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class StreamDriver:
    """One streamed chat answer across all its attempts."""

    def __init__(
        self, core: ClientCore, body: dict[str, Any], options: CallOptions, seed: Seed | None = None
    ) -> None:
        self.core = core
        self.body = body
        self._encoded = encode(body)  # once, and before any I/O: bad values fail here
        self.options = options
        self.attempts = Attempts(core, options)
        self.acc = Accumulator(seed)
        self._seed_pieces = self.acc.pieces
        self.resumes = 0
        self.done = False
        self.request_id: str | None = None
        self._decoder = self._new_decoder()
        self._saw_done = False
        self._last_data = self.attempts.started
        self._pending: list[StreamEvent] = []
        self.backlog = 0  # chunks of the last read not yet digested (see `feed`)
        self._pacer = _Pacer(options.pace, self._last_data) if options.pace else None
        self._prefixed_reasoning = False  # the last resume sent the reasoning on its prefix
        self._no_reasoning_prefix = False  # the server refused that: thinking restarts

    # ---- requests ------------------------------------------------------------------

    def request(self) -> HTTPRequest:
        """The next request: the original one, or a prefix-completion resume."""
        self._decoder = self._new_decoder()
        self._saw_done = False
        self.backlog = 0
        self._last_data = self.core.clock.now()
        headers = self.core.headers(self.options.headers, stream=True)
        if not self.acc.has_output:
            return HTTPRequest("POST", self.core.url("/chat/completions"), headers, self._encoded)
        body = self._resume_body()
        return HTTPRequest("POST", self.core.beta_url("/chat/completions"), headers, encode(body))

    def _new_decoder(self) -> SSEDecoder:
        return SSEDecoder(max_event_size=self.core.limits.max_event_bytes)

    def _resume_body(self) -> dict[str, Any]:
        prefix = prefix_message(self.body, self.acc.content, self.acc.reasoning)
        self._prefixed_reasoning = "reasoning_content" in prefix
        body = {**self.body, "messages": [*self.body["messages"], prefix]}
        if "max_tokens" in body:
            body["max_tokens"] = max(1, body["max_tokens"] - self.acc.pieces)
        return body

    def http_timeouts(self) -> Timeouts:
        return self.attempts.http_timeouts(idle=self.options.timeout.idle)

    @property
    def delivered(self) -> bool:
        """Whether the stream has handed out output (a seed does not count: the caller
        had it), so that a failure is resumed rather than retried."""
        return self.acc.pieces > self._seed_pieces or self.acc.has_tool_calls

    # ---- responses -----------------------------------------------------------------

    def start(self, status: int, headers: Mapping[str, str]) -> bool:
        """Record a response's head; False when the shell must read the error body."""
        self.request_id = headers.get("x-ds-trace-id") or self.request_id
        logger.debug("POST status=%d request=%s", status, self.request_id)
        return status < 400

    def fail(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        raise error_from_status(status, headers, body)

    def feed(self, data: bytes) -> Iterator[StreamEvent]:
        """Decode bytes of the body into events (the hot path).

        Lazy: each chunk is digested only when the consumer asks for its events, so
        `result()` always matches what the caller has been handed, never more.
        """
        try:
            items = self._decoder.feed(data)
        except SSEError as exc:
            raise APIResponseError(f"Invalid event stream: {exc}") from exc
        now = self.core.clock.now()
        # `backlog` counts the data chunks still to digest: comments and [DONE] carry no
        # event a relay would wait for (a chunk that turns out empty costs it one late write)
        self.backlog = sum(1 for i in items if type(i) is ServerSentEvent and i.data != "[DONE]")
        for item in items:
            if isinstance(item, SSEComment):
                if not self.delivered:
                    yield KEEP_ALIVE
                continue
            self._last_data = now
            if item.data == "[DONE]":
                self._saw_done = True
            else:
                self.backlog -= 1
                yield from self.acc.add(self._parse(item.data))
        self._check_clocks(now)

    def feed_wire(self, data: bytes) -> Iterator[StreamEvent | bytes]:
        """`feed()` for a relay: a read of the first attempt made only of plain delta
        chunks (`plain_delta`) is digested whole, then handed on as its bytes, so what a
        resume continues from is exactly what was passed on; anything else as events.

        Only the first attempt: a resumed answer's chunks carry another id, and the
        relay encodes those itself under the first one.
        """
        chunks = None if self.resumes or self._pacer else self._plain_chunks(data)
        if chunks is None:
            yield from self.feed(data)
            return
        now = self.core.clock.now()
        self._last_data = now
        self.backlog = 0
        for chunk in chunks:
            self.acc.add(chunk)
        yield data
        self._check_clocks(now)

    def _plain_chunks(self, data: bytes) -> list[dict[str, Any]] | None:
        payloads = self._decoder.whole_data(data)
        if payloads is None:
            return None
        chunks = []
        for payload in payloads:
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:  # [DONE], or broken: `feed()` says which
                return None
            if not plain_delta(chunk):
                return None
            chunks.append(chunk)
        return chunks

    def _parse(self, data: str) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StreamBroken(f"Malformed chunk in the stream: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise StreamBroken(f"Unexpected chunk in the stream: {data[:200]!r}")
        if "error" in chunk:
            raise APIResponseError(f"Error in the stream: {chunk['error']}")
        return chunk

    def _check_clocks(self, now: float) -> None:
        idle = self.options.timeout.idle
        if idle is not None and now - self._last_data > idle:
            raise APITimeoutError(f"No data for {idle}s (idle timeout; keep-alives do not count)")
        left = self.attempts.remaining()
        if left is not None and left <= 0:
            raise APITimeoutError(f"Total timeout of {self.options.timeout.total}s exceeded")

    def finish(self) -> list[StreamEvent]:
        """The body ended cleanly: complete, or broken (raises `StreamBroken`)."""
        self._decoder.close()
        finish = self.acc.finish_reason
        if finish in CUT_BY_SERVER:
            raise StreamBroken(CUT_BY_SERVER[finish])
        if finish is None and not self._saw_done:
            raise StreamBroken("The stream ended without a finish_reason or [DONE]")
        self.done = True
        result = self.result()
        logger.info(
            "chat done id=%s request=%s finish=%s retries=%d resumes=%d",
            result.id,
            self.request_id,
            finish,
            self.attempts.retries,
            self.resumes,
        )
        return [Done(result)]

    @property
    def paced(self) -> bool:
        return self._pacer is not None

    def pace_delay(self, event: StreamEvent | bytes) -> float:
        if self._pacer is None:
            return 0.0
        text = getattr(event, "text", None)
        return self._pacer.delay(len(text), self.core.clock.now()) if text else 0.0

    def result(self) -> ChatResult:
        return self.acc.result(self.resumes)

    # ---- failures ------------------------------------------------------------------

    def recover(self, exc: BaseException) -> float:
        """Plan the attempt after a failure: the delay before it, or raise the final error."""
        error = to_api_error(exc, self.core)
        if not self.delivered and not self._refused_reasoning_prefix(error):  # (a seed's)
            delay = self.attempts.next_retry(error)
            status = error.status_code if isinstance(error, APIStatusError) else None
            self._pending.append(Retrying(self.attempts.retries, delay, str(error), status))
            return delay
        return self._plan_resume(error)

    def _plan_resume(self, error: APIError) -> float:
        if self.acc.has_tool_calls:
            raise self._incomplete("the stream broke inside a tool call", error)
        if self._refused_reasoning_prefix(error):  # that resume failed: this one replaces it
            self._no_reasoning_prefix = True
            return self._restart_thinking(error, counted=self.resumes > 0)
        if self._no_reasoning_prefix and self.acc.reasoning and not self.acc.content:
            return self._restart_thinking(error, counted=False)
        if not self.attempts.retryable(error):
            raise self._incomplete("the failure cannot be resumed", error)
        if self.resumes >= self.options.max_resumes:
            raise self._incomplete(f"gave up after {self.resumes} resumes", error)
        delay = 0.0 if isinstance(error, StreamBroken) else self._resume_backoff(error)
        self.resumes += 1
        self.acc.finish_reason = None
        self._pending.append(Resumed(self.resumes, str(error)))
        logger.warning("resume %d after: %s", self.resumes, error)
        return delay

    def _refused_reasoning_prefix(self, error: APIError) -> bool:
        """A 400 to a resume that carried the reasoning on its prefix: this server does not
        continue thinking from a prefix (DeepSeek's docs are silent; both are handled)."""
        status = error.status_code if isinstance(error, APIStatusError) else None
        return self._prefixed_reasoning and status == 400 and not self.acc.content

    def _restart_thinking(self, error: APIError, *, counted: bool) -> float:
        """Ask again from the start: the thinking restarts, no answer text had come.
        `counted`: the refused resume this replaces was counted already."""
        if not counted:
            if self.resumes >= self.options.max_resumes:
                raise self._incomplete(f"gave up after {self.resumes} resumes", error)
            self.resumes += 1
        self.acc.restart_reasoning()
        self.acc.finish_reason = None
        self._prefixed_reasoning = False
        self._pending.append(Resumed(self.resumes, str(error), restarted=True))
        logger.warning("resume %d (the thinking restarts) after: %s", self.resumes, error)
        return 0.0

    def _resume_backoff(self, error: APIError) -> float:
        try:
            return self.attempts.backoff(error, self.resumes)
        except APITimeoutError as timeout:
            raise self._incomplete("the total timeout would pass", timeout) from error

    def _incomplete(self, why: str, error: APIError) -> IncompleteStreamError:
        partial = self.result()
        return IncompleteStreamError(
            f"Incomplete answer: {why} ({error}); {len(partial.content)} characters arrived",
            partial=partial,
            cause=str(error),
        )

    def take_pending(self) -> list[StreamEvent]:
        pending, self._pending = self._pending, []
        return pending


class CallDriver:
    """A plain JSON request (models, balance, FIM) with retries."""

    def __init__(self, core: ClientCore, options: CallOptions) -> None:
        self.core = core
        self.attempts = Attempts(core, options)

    def http_timeouts(self) -> Timeouts:
        return self.attempts.http_timeouts()

    def handle(self, status: int, headers: Mapping[str, str], body: bytes) -> Any:
        """The parsed JSON of a response, or the typed error for it."""
        if status >= 400:
            raise error_from_status(status, headers, body)
        try:
            # the server may send blank lines while it queues a non-streamed request
            return orjson.loads(body.strip() or b"null")
        except orjson.JSONDecodeError as exc:
            raise APIResponseError(f"The server sent invalid JSON: {body[:200]!r}") from exc

    def recover(self, exc: BaseException) -> float:
        return self.attempts.next_retry(to_api_error(exc, self.core))
