"""The asynchronous client: the same drivers as `DeepSeek`, with async I/O."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Unpack, cast

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
from dskit.client._streams import AsyncEventStream
from dskit.client._types import Balance, ChatResult, FimResult, StreamEvent

if TYPE_CHECKING:
    import httpx2


class AsyncHTTP(Protocol):
    """What the async shell sends through: `H1Pool`, or httpx2 behind `HttpxIO`."""

    def stream(self, request: HTTPRequest, timeouts: Timeouts) -> AbstractAsyncContextManager[Any]:
        """A response with `status_code`, `headers`, `aiter_bytes()` and `aread()`."""
        ...

    async def aclose(self) -> None: ...


class RawResponse(Protocol):
    """A response whose head has arrived (`AsyncDeepSeek.send`): `H1Response` or httpx2's."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...


class HttpxIO:
    """httpx2 for what `H1Pool` does not do: HTTP/2, proxies, a custom transport."""

    def __init__(self, client: httpx2.AsyncClient) -> None:
        self.client = client

    def stream(self, request: HTTPRequest, timeouts: Timeouts) -> AbstractAsyncContextManager[Any]:
        return self.client.stream(
            request.method,
            request.url,
            headers=request.headers,
            content=request.content,
            timeout=httpx_timeout(timeouts),
        )

    async def aclose(self) -> None:
        await self.client.aclose()


class AsyncDeepSeek(ClientBase[AsyncHTTP, "httpx2.AsyncBaseTransport"]):
    """The async DeepSeek client; one connection pool per client.

    HTTP/1.1 goes through dskit's own asyncio connection pool (`_h1.py`, the cheapest
    per streamed event); HTTP/2, a proxy from the environment or a custom `transport`
    go through httpx2.

    >>> async with AsyncDeepSeek() as client:
    ...     result = await client.chat("Hello")
    """

    def _http_client(
        self,
        *,
        http2: bool,
        transport: httpx2.AsyncBaseTransport | None,
        verify: ssl.SSLContext | bool,
    ) -> AsyncHTTP:
        from dskit.client import _h1

        if _h1.usable(http2=http2, transport=transport):
            limits = self._core.limits
            return _h1.H1Pool(
                verify=verify,
                max_connections=limits.max_connections,
                max_keepalive=limits.max_keepalive_connections,
            )
        import httpx2

        options = self._httpx_options(http2=http2, transport=transport, verify=verify)
        return HttpxIO(httpx2.AsyncClient(**options))

    async def chat(self, messages: Messages, **params: Unpack[ChatParams]) -> ChatResult:
        """Send a conversation and return the whole answer (streamed underneath)."""
        async with self.stream(messages, **params) as stream:
            return await stream.final()

    def stream(self, messages: Messages, **params: Unpack[ChatParams]) -> AsyncStream:
        """Stream an answer as typed events. Parameters are checked before any I/O."""
        return AsyncStream(self._http, self._stream_driver(messages, params))

    def continue_stream(
        self,
        messages: Messages,
        content: str,
        *,
        reasoning: str | None = None,
        pieces: int = 0,
        **params: Unpack[ChatParams],
    ) -> AsyncStream:
        """`DeepSeek.continue_stream`, async: the rest of an answer whose start you
        already have, through Chat Prefix Completion."""
        seed = continuation_seed(content, reasoning, pieces)
        return AsyncStream(self._http, self._stream_driver(messages, params, seed))

    async def batch(
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
        """`DeepSeek.batch` with asyncio tasks: the same results, in the same order; a
        cancelled batch cancels its requests in flight."""
        run = BatchRun.plan(
            requests, concurrency=concurrency, pack=pack, system=system, params=params,
            on_result=on_result, on_limit=on_limit,
        )  # fmt: skip
        inbox: asyncio.Queue[Landing] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        landing: Landing | None = None
        try:
            while (units := run.step(landing, self._core.clock.now())) is not None:
                for unit in units:
                    task = asyncio.create_task(self._batch_unit(unit, inbox.put_nowait))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                landing = await inbox.get()
        finally:
            run.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return run.ordered()

    async def _batch_unit(self, unit: Unit, send: Callable[[Landing], None]) -> None:
        """One unit's request, as a task: what the run wants to know goes to `send`."""
        try:
            async with self.stream(unit.messages, **unit.chat_params) as stream:
                async for event in stream:
                    if unit.telling(event):
                        send(Observed(unit, event, self._core.clock.now()))
                result = await stream.final()
        except Exception as exc:  # a failed request is that request's result
            send(Finished(unit, error=exc))
        else:
            send(Finished(unit, result))

    async def models(self) -> list[ModelInfo]:
        """`GET /models`: the models with their windows, output limits and effort levels
        (kept for `model_info`)."""
        body = await self._call(get_request(self._core, "/models"))
        return self._core.models.store(body, self._core.clock.now())

    async def model_info(self, model: str = DEFAULT_MODEL) -> ModelInfo:
        """What `GET /models` says of `model`, fetched once an hour; the figures of
        DeepSeek's docs when the server cannot be asked or does not list it."""
        return (await self._known_models()).info(model)

    async def require_model(self, model: str) -> ModelInfo:
        """`model_info`, and a ValidationError when the server lists its models and
        `model` is not among them (retired names count as what they became)."""
        return (await self._known_models()).require(model)

    async def _known_models(self) -> ModelCache:
        cache, now = self._core.models, self._core.clock.now()
        if cache.stale(now):
            with cache.fetching(now):
                await self.models()
        return cache

    async def balance(self) -> Balance:
        return Balance.from_dict(await self._call(get_request(self._core, "/user/balance")))

    async def fim(self, prompt: str, suffix: str | None = None, **params: Any) -> FimResult:
        """Fill in the middle between `prompt` and `suffix` (beta endpoint)."""
        request = fim_request(self._core, prompt, suffix, params)
        return FimResult.from_dict(await self._call(request))

    def send(
        self, path: str, content: bytes, *, headers: Mapping[str, str] | None = None,
        root: bool = False,
    ) -> AbstractAsyncContextManager[RawResponse]:  # fmt: skip
        """POST `content` to `path` under the base URL (`root`: beside `/v1`, as the
        Anthropic format is) with this client's key, once, as it is: no retries, no
        parsing, for a relay of formats dskit does not speak. Inside `async with` the
        response's head has arrived; leaving the block closes an unfinished response."""
        core = self._core
        url = core.root_url(path) if root else core.url(path)
        request = HTTPRequest("POST", url, core.headers(headers), content)
        return cast(
            "AbstractAsyncContextManager[RawResponse]",
            self._http.stream(request, (core.timeout.connect, core.timeout.read)),
        )

    def redact(self, text: str) -> str:
        """`text` without this client's key (whatever its shape) or anything key-shaped."""
        return self._core.redact(text)

    async def _call(self, request: HTTPRequest) -> Any:
        driver = CallDriver(self._core, self._core.options({}))
        while True:
            try:
                async with self._http.stream(request, driver.http_timeouts()) as response:
                    body = await response.aread()
                return driver.handle(response.status_code, response.headers, body)
            except Exception as exc:  # every failure goes through one retry decision
                await self._core.clock.asleep(driver.recover(exc))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDeepSeek:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncStream(AsyncEventStream[StreamEvent]):
    """A streamed answer: an async iterator of events and an async context manager that
    always closes its connection. `await final()` drains the rest."""

    def __init__(self, http: AsyncHTTP, driver: StreamDriver) -> None:
        self._http = http
        self._driver = driver
        self._wire = False
        self._items = self._run()
        self._events = cast("AsyncGenerator[StreamEvent, None]", self._items)  # see wire()

    async def final(self) -> ChatResult:
        async for _ in self._events:
            pass
        return self._driver.result()

    def snapshot(self) -> ChatResult:
        """What has arrived so far (a partial result while the stream runs)."""
        return self._driver.result()

    def wire(self) -> AsyncIterator[StreamEvent | bytes]:
        """The rest of the stream for a relay (the gateway): a read of the first attempt
        made only of plain text chunks (`data: {json}` events, LF-framed, no finish,
        usage or tool call) comes as its bytes, as the server sent them; anything else
        as events. A read is digested before it is handed on, so `snapshot()` and a
        resume cover exactly what was passed on. After `wire()` iterate only this."""
        self._wire = True
        return self._items

    @property
    def delivered(self) -> bool:
        """Whether any of the answer has arrived (text, reasoning or a tool call)."""
        return self._driver.delivered

    @property
    def ready(self) -> bool:
        """Whether the next event has already arrived (see `Stream.ready`)."""
        return self._driver.backlog > 0

    async def text(self) -> AsyncIterator[str]:
        """Only the answer's text, piece by piece."""
        async for event in self:
            if event.type == "content":
                yield event.text

    async def _run(self) -> AsyncGenerator[StreamEvent | bytes, None]:
        """Attempts until the answer is done; one generator (not one per attempt), so an
        event climbs one frame less on its way to the caller."""
        driver = self._driver
        clock = driver.core.clock
        while not driver.done:
            try:
                async with self._http.stream(driver.request(), driver.http_timeouts()) as response:
                    if not driver.start(response.status_code, response.headers):
                        driver.fail(response.status_code, response.headers, await response.aread())
                    async for data in response.aiter_bytes():
                        for event in driver.feed_wire(data) if self._wire else driver.feed(data):
                            if driver.paced:
                                await clock.asleep(driver.pace_delay(event))
                            yield event
                for event in driver.finish():
                    yield event
            except Exception as exc:  # every failure goes through one retry/resume decision
                delay = driver.recover(exc)
                for event in driver.take_pending():
                    yield event
                await clock.asleep(delay)
