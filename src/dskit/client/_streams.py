"""The plumbing every event stream shares: iterate, use as a context manager, close.

A subclass sets `self._events` to its generator; leaving the `with` block (normally, by
`break` or by an exception) closes that generator, and so whatever it holds open.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Generator, Iterator
from types import TracebackType
from typing import Generic, Self, TypeVar

from dskit.client._types import StreamEvent

EventT = TypeVar("EventT", bound=StreamEvent)


class EventStream(Generic[EventT]):
    """An iterator of events and a context manager that always closes it."""

    _events: Generator[EventT, None, None]

    def __iter__(self) -> Iterator[EventT]:
        return self

    def __next__(self) -> EventT:
        return next(self._events)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the stream and release what it holds (safe to call twice)."""
        self._events.close()


class AsyncEventStream(Generic[EventT]):
    """An async iterator of events and an async context manager that always closes it."""

    _events: AsyncGenerator[EventT, None]

    def __aiter__(self) -> AsyncIterator[EventT]:
        return self

    def __anext__(self) -> Awaitable[EventT]:
        return self._events.__anext__()  # the generator's own awaitable: no extra frame

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the stream and release what it holds (safe to call twice)."""
        await self._events.aclose()
