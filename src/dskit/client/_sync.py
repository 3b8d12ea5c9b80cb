"""The synchronous client: a thin I/O shell over the shared drivers."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager
from queue import SimpleQueue
from types import TracebackType
from typing import TYPE_CHECKING, Any, Unpack

from dskit._models import DEFAULT_MODEL, ModelInfo
from dskit.client._base import ClientBase, httpx_timeout
from dskit.client._batch import (
    BatchResult,
    BatchRun,
    Concurrency,
    Finished,
    Landing,
    LimitChange,
    Observed,
    Unit,
)
from dskit.client._core import (
    ChatParams,
    HTTPRequest,
    Messages,
    Timeouts,
    continuation_seed,
    fim_request,
    get_request,
)
from dskit.client._driver import CallDriver, StreamDriver
from dskit.client._models import ModelCache
from dskit.client._streams import EventStream
from dskit.client._types import Balance, ChatResult, FimResult, StreamEvent

if TYPE_CHECKING:
    import httpx2


class DeepSeek(ClientBase["httpx2.Client", "httpx2.BaseTransport"]):
    """A DeepSeek client. Thread-safe; one connection pool per client.

    >>> client = DeepSeek()                      # key from DEEPSEEK_API_KEY
    >>> client.chat("Hello").content
    """

    def _http_client(
        self, *, http2: bool, transport: httpx2.BaseTransport | None, verify: ssl.SSLContext | bool
    ) -> httpx2.Client:
        import httpx2

        return httpx2.Client(**self._httpx_options(http2=http2, transport=transport, verify=verify))

    # ---- chat ------------------------------------------------------------------------

    def chat(self, messages: Messages, **params: Unpack[ChatParams]) -> ChatResult:
        """Send a conversation and return the whole answer (streamed underneath, so a
        broken connection is resumed rather than lost)."""
        with self.stream(messages, **params) as stream:
            return stream.final()

    def stream(self, messages: Messages, **params: Unpack[ChatParams]) -> Stream:
        """Stream an answer as typed events. Parameters are checked before any I/O."""
        return Stream(self._http, self._stream_driver(messages, params))

    def continue_stream(
        self,
        messages: Messages,
        content: str,
        *,
        reasoning: str | None = None,
        pieces: int = 0,
        **params: Unpack[ChatParams],
    ) -> Stream:
        """Stream the rest of an answer whose start (`content`, and a reasoner's
        `reasoning` when it stopped before any content) you already have, through Chat
        Prefix Completion. The start yields no events, but `final()` and `snapshot()`
        hold the whole answer; `pieces` (the streamed pieces the start took) count
        against `max_tokens`. Breaks are resumed as in `stream()`."""
        seed = continuation_seed(content, reasoning, pieces)
        return Stream(self._http, self._stream_driver(messages, params, seed))

    # ---- batches -------------------------------------------------------------------

    def batch(
        self,
        requests: Iterable[Any],
        *,
        concurrency: Concurrency | int | None = None,
        pack: int | None = None,
        system: str | None = None,
        on_result: Callable[[BatchResult], object] | None = None,
        on_limit: Callable[[LimitChange], object] | None = None,
        **params: Unpack[ChatParams],
    ) -> list[BatchResult]:
        """Answer many independent requests (question strings, `{"id", "question"}` or
        `{"messages": [...], ...params}`), one result per request in their order; a
        failed one has `error` and does not stop the rest. `concurrency`: a fixed int, or
        a `Concurrency` that adapts (AIMD; the default). `pack`: up to that many short
        questions per JSON-mode request. `on_result` sees each result as it finishes, and
        `on_limit` each change of the concurrency limit (both on the calling thread).
        `params` go with every request.

        Ctrl-C (KeyboardInterrupt) ends it at once: the results reported so far are all
        there is; requests still in flight are abandoned (each worker, a daemon thread,
        closes its connection at its next event)."""
        run = BatchRun.plan(
            requests, concurrency=concurrency, pack=pack, system=system, params=params,
            on_result=on_result, on_limit=on_limit,
        )  # fmt: skip
        inbox: SimpleQueue[Landing] = SimpleQueue()
        landing: Landing | None = None
        try:
            while (units := run.step(landing, self._core.clock.now())) is not None:
                for unit in units:
                    worker = threading.Thread(
                        target=self._batch_unit, args=(run, unit, inbox.put), daemon=True,
                        name="dskit-batch",
                    )  # fmt: skip
                    worker.start()
                landing = inbox.get()
        finally:
            run.stop()
        return run.ordered()

    def _batch_unit(self, run: BatchRun, unit: Unit, send: Callable[[Landing], None]) -> None:
        """One unit's request, on a thread of its own: what the run wants to know goes to
        `send` (the calling thread takes it); a stopped run's worker leaves."""
        try:
            with self.stream(unit.messages, **unit.chat_params) as stream:
                for event in stream:
                    if run.stopped:
                        return
                    if unit.telling(event):
                        send(Observed(unit, event, self._core.clock.now()))
                result = stream.final()
        except BaseException as exc:  # a request's failure, or the calling thread's to raise
            send(Finished(unit, error=exc))
        else:
            send(Finished(unit, result))

    # ---- other endpoints -----------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """`GET /models`: the models with their windows, output limits and effort levels
        (kept for `model_info`)."""
        body = self._call(get_request(self._core, "/models"))
        return self._core.models.store(body, self._core.clock.now())

    def model_info(self, model: str = DEFAULT_MODEL) -> ModelInfo:
        """What `GET /models` says of `model`, fetched once an hour; the figures of
        DeepSeek's docs when the server cannot be asked or does not list it."""
        return self._known_models().info(model)

    def require_model(self, model: str) -> ModelInfo:
        """`model_info`, and a ValidationError when the server lists its models and
        `model` is not among them (retired names count as what they became)."""
        return self._known_models().require(model)

    def _known_models(self) -> ModelCache:
        cache, now = self._core.models, self._core.clock.now()
        if cache.stale(now):
            with cache.fetching(now):
                self.models()
        return cache

    def balance(self) -> Balance:
        return Balance.from_dict(self._call(get_request(self._core, "/user/balance")))

    def fim(self, prompt: str, suffix: str | None = None, **params: Any) -> FimResult:
        """Fill in the middle between `prompt` and `suffix` (beta endpoint)."""
        request = fim_request(self._core, prompt, suffix, params)
        return FimResult.from_dict(self._call(request))

    def _call(self, request: HTTPRequest) -> Any:
        driver = CallDriver(self._core, self._core.options({}))
        while True:
            try:
                with _stream(self._http, request, driver.http_timeouts()) as response:
                    body = response.read()
                return driver.handle(response.status_code, response.headers, body)
            except Exception as exc:  # every failure goes through one retry decision
                self._core.clock.sleep(driver.recover(exc))

    # ---- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeepSeek:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stream(
    http: httpx2.Client, request: HTTPRequest, timeouts: Timeouts
) -> AbstractContextManager[httpx2.Response]:
    """`with _stream(...) as response`: the shape `AsyncHTTP.stream` has in the async shell."""
    return http.stream(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        timeout=httpx_timeout(timeouts),
    )


class Stream(EventStream[StreamEvent]):
    """A streamed answer: an iterator of events and a context manager that always closes
    its connection. `final()` drains the rest and returns the whole `ChatResult`."""

    def __init__(self, http: httpx2.Client, driver: StreamDriver) -> None:
        self._http = http
        self._driver = driver
        self._events = self._run()

    def final(self) -> ChatResult:
        for _ in self._events:
            pass
        return self._driver.result()

    def snapshot(self) -> ChatResult:
        """What has arrived so far (a partial result while the stream runs)."""
        return self._driver.result()

    @property
    def ready(self) -> bool:
        """Whether the next event has already arrived, so taking it will not wait on the
        network: a relay can hold its write while this is True and send a burst at once."""
        return self._driver.backlog > 0

    def text(self) -> Iterator[str]:
        """Only the answer's text, piece by piece."""
        for event in self:
            if event.type == "content":
                yield event.text

    def _run(self) -> Generator[StreamEvent, None, None]:
        """Attempts until the answer is done (one generator, as in `AsyncStream`)."""
        driver = self._driver
        clock = driver.core.clock
        while not driver.done:
            try:
                with _stream(self._http, driver.request(), driver.http_timeouts()) as response:
                    if not driver.start(response.status_code, response.headers):
                        driver.fail(response.status_code, response.headers, response.read())
                    for data in response.iter_bytes():
                        for event in driver.feed(data):
                            if driver.paced:
                                clock.sleep(driver.pace_delay(event))
                            yield event
                yield from driver.finish()
            except Exception as exc:  # every failure goes through one retry/resume decision
                delay = driver.recover(exc)
                yield from driver.take_pending()
                clock.sleep(delay)
