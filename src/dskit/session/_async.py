"""`AsyncChatSession`: the asyncio twin of `ChatSession`; `SessionCore` decides.

Store work goes through the stores' async methods (SQLite in a thread, Redis through
redis.asyncio) and sync tools run in threads, so the event loop never blocks; the tool
calls of one reply run concurrently. The constructor does no I/O: the session is created
in (or loaded from) the store on first use, or explicitly with `await session.open()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dskit._models import DEFAULT_MODEL
from dskit.client._errors import ContextOverflowError, ToolError, ValidationError
from dskit.client._streams import AsyncEventStream
from dskit.client._types import ChatResult, StreamEvent, ToolCall
from dskit.session._context import ContextPolicy
from dskit.session._core import (
    DEFAULT_TOOL_ROUNDS,
    GROWING,
    MAX_REBASES,
    SAVE_INTERVAL,
    Plan,
    SessionCore,
    SessionViews,
    Throttle,
    check_save_interval,
    fork_record,
    new_record,
    worth_keeping,
)
from dskit.session._tools import Tool, format_error, format_result
from dskit.store._memory import MemoryStore
from dskit.store._model import (
    SessionConflictError,
    SessionNotFoundError,
    SessionRecord,
    StoredMessage,
)

if TYPE_CHECKING:
    from dskit.client._async import AsyncDeepSeek, AsyncStream
    from dskit.store._base import SessionStore


class AsyncChatSession(SessionViews):
    """A conversation that remembers, for asyncio code."""

    def __init__(
        self,
        client: AsyncDeepSeek,
        *,
        system: str | None = None,
        model: str = DEFAULT_MODEL,
        store: SessionStore | None = None,
        session_id: str | None = None,
        tools: Iterable[Tool | Any] = (),
        context: ContextPolicy | None = None,
        params: Mapping[str, Any] | None = None,
        max_tool_rounds: int = DEFAULT_TOOL_ROUNDS,
        save_interval: float = SAVE_INTERVAL,
    ) -> None:
        self.client = client
        self.store: SessionStore = store if store is not None else MemoryStore()
        record = new_record(session_id, model, system, params or {})
        self._core = SessionCore(
            record, tools=tools, policy=context, max_tool_rounds=max_tool_rounds
        )
        self._lookup = session_id is not None
        self._opened = False
        self.save_interval = check_save_interval(save_interval)

    async def open(self) -> AsyncChatSession:
        """Create the session in the store, or load it when its id is already there."""
        if self._opened:
            return self
        record = self._core.record
        try:
            if not self._lookup:
                raise SessionNotFoundError(record.id)
            self._core.record = await self.store.aload(record.id)
        except SessionNotFoundError:
            self._core.record = await self.store.acreate(record)
        self._opened = True
        return self

    @classmethod
    async def load(
        cls, client: AsyncDeepSeek, session_id: str, *, store: SessionStore, **options: Any
    ) -> AsyncChatSession:
        """Continue a stored session (SessionNotFoundError when there is none)."""
        await store.aload(session_id)
        return await cls(client, store=store, session_id=session_id, **options).open()

    # ---- talking -------------------------------------------------------------------

    async def send(self, text: str, **params: Any) -> ChatResult:
        async with await self.stream(text, **params) as stream:
            return await stream.final()

    async def stream(self, text: str, **params: Any) -> AsyncSessionStream:
        """`async with await session.stream(text) as s: async for event in s: ...`"""
        message = self._core.user_message(text)
        await self.open()
        try:
            await self._append([message])
        except SessionConflictError as conflict:  # nothing of this turn was written
            raise conflict.in_turn(await self._reloaded(), question_stored=False) from None
        return AsyncSessionStream(self, params, fresh=True)

    async def retry(self, **params: Any) -> ChatResult:
        async with await self.retry_stream(**params) as stream:
            return await stream.final()

    async def retry_stream(self, **params: Any) -> AsyncSessionStream:
        """`async with await session.retry_stream() as s: ...` (see `ChatSession.retry`)."""
        await self.open()
        await self._truncate(self._core.retry_length())
        return AsyncSessionStream(self, params)

    async def configure(
        self,
        *,
        model: str | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the model, system prompt or params for good (see `ChatSession.configure`)."""
        core = self._core
        changes = core.header_update(model, system, params)
        if not changes:
            return
        await self.open()
        record = core.record
        version = await self.store.aupdate(record.id, expected_version=record.version, **changes)
        core.configured(changes, version)

    async def undo(self) -> list[dict[str, Any]]:
        await self.open()
        index, removed = self._core.last_turn()
        await self._truncate(index)
        return removed

    async def fork(self, *, session_id: str | None = None) -> AsyncChatSession:
        await self.open()
        copy = fork_record(await self.store.aload(self.id), session_id)
        await self.store.acreate(copy)
        forked = AsyncChatSession(
            self.client, store=self.store, session_id=copy.id, tools=self._core.tools.values(),
            context=self._core.policy, max_tool_rounds=self._core.max_tool_rounds,
            save_interval=self.save_interval,
        )  # fmt: skip
        return await forked.open()

    async def export(self) -> dict[str, Any]:
        await self.open()
        return await asyncio.to_thread(self.store.export_session, self.id)

    async def reload(self) -> None:
        self._core.record = await self.store.aload(self.id)
        self._opened = True

    async def _reloaded(self) -> SessionRecord:
        await self.reload()
        return self._core.record

    # ---- store writes ----------------------------------------------------------------

    async def _append(self, messages: list[StoredMessage]) -> None:
        record = self._core.record
        version = await self.store.aappend(record.id, messages, expected_version=record.version)
        self._core.appended(messages, version)

    async def _replace(self, index: int, message: StoredMessage) -> None:
        record = self._core.record
        version = await self.store.areplace(
            record.id, index, message, expected_version=record.version
        )
        self._core.replaced(index, message, version)

    async def _truncate(self, length: int) -> None:
        record = self._core.record
        version = await self.store.atruncate(record.id, length, expected_version=record.version)
        self._core.truncated(length, version)

    # ---- the turn ------------------------------------------------------------------

    async def _plan(self, params: Mapping[str, Any]) -> Plan:
        core = self._core
        core.model_info = await self.client.model_info(core.record.model)
        plan = core.plan(params.get("max_tokens"))
        if not plan.summarize:
            return plan
        request = core.summary_request(plan)
        result = await self.client.chat(request, **core.summary_params())
        await self._append([core.summary_message(plan, result)])
        return core.plan(params.get("max_tokens"), allow_summary=False)

    async def _run_tools(self, calls: list[ToolCall]) -> None:
        outputs = await asyncio.gather(*(self._run_tool(call) for call in calls))
        messages = [self._core.tool_message(c, o) for c, o in zip(calls, outputs, strict=True)]
        await self._append(messages)

    async def _run_tool(self, call: ToolCall) -> str:
        resolved = self._core.resolve(call)
        if isinstance(resolved, str):
            return resolved
        found, kwargs = resolved
        try:
            if found.is_async:
                return format_result(await found.fn(**kwargs))
            return format_result(await asyncio.to_thread(found.fn, **kwargs))
        except Exception as exc:  # a tool's failure is the model's to read, not a crash
            return format_error(exc)


class AsyncSessionStream(AsyncEventStream[StreamEvent]):
    """The async twin of `SessionStream`."""

    def __init__(
        self, session: AsyncChatSession, params: Mapping[str, Any], *, fresh: bool = False
    ) -> None:
        self._session = session
        self._params = dict(params)
        self._fresh = fresh
        self._result: ChatResult | None = None
        self._live: AsyncStream | None = None
        self._last: ChatResult | None = None
        self._events = self._run()

    def snapshot(self) -> ChatResult | None:
        """The reply streaming now, as far as it got, or the last finished reply."""
        if self._live is not None:
            return self._live.snapshot()
        return self._last

    async def final(self) -> ChatResult:
        async for _ in self._events:
            pass
        if self._result is None:
            raise RuntimeError("the stream was closed before its answer finished")
        return self._result

    async def _run(self) -> AsyncGenerator[StreamEvent, None]:
        try:
            async for event in self._turn():
                yield event
        except SessionConflictError as conflict:  # the question is in the store
            if conflict.record is not None:
                raise
            fresh = await self._session._reloaded()
            raise conflict.in_turn(fresh, question_stored=True) from None

    async def _turn(self) -> AsyncGenerator[StreamEvent, None]:
        session, core = self._session, self._session._core
        tool_round = 0
        while True:
            plan = (
                await self._first_plan() if tool_round == 0 else await session._plan(self._params)
            )
            params = core.request_params(self._params, tool_round)
            result = None
            try:
                async for event in self._one_reply(plan, params):
                    if isinstance(event, ChatResult):
                        result = event
                    else:
                        yield event
            except ValidationError:  # refused before sending: nothing was asked
                await self._take_back(tool_round)
                raise
            assert result is not None
            calls = core.calls_to_run(result)
            if not calls:
                self._result = result
                return
            if core.over_limit(tool_round):
                await session._append(core.limit_messages(calls))
                raise ToolError(f"the model kept calling tools after {tool_round} rounds")
            await session._run_tools(calls)
            tool_round += 1

    async def _first_plan(self) -> Plan:
        """The first request of a turn; a new question that cannot fit is taken back."""
        try:
            return await self._session._plan(self._params)
        except ContextOverflowError:
            await self._take_back(0)
            raise

    async def _take_back(self, tool_round: int) -> None:
        """Remove a new question that could not be sent, so it is not left dangling."""
        if self._fresh and tool_round == 0:
            await self._session._truncate(self._session._core.last_user_index())

    async def _one_reply(
        self, plan: Plan, params: dict[str, Any]
    ) -> AsyncGenerator[StreamEvent | ChatResult, None]:
        """The reply's events, then its ChatResult (async generators cannot return)."""
        session, core = self._session, self._session._core
        saver = _AsyncSaver(session, Throttle(session.save_interval))
        async with session.client.stream(plan.messages, **params) as stream:
            self._live = stream
            try:
                async for event in stream:
                    if event.type in GROWING and saver.throttle.due():
                        await saver.save(core.reply_message(stream.snapshot(), incomplete=True))
                    yield event
                result = await stream.final()
            except BaseException:
                partial = core.reply_message(stream.snapshot(), incomplete=True)
                await asyncio.shield(saver.save_partial(partial))
                raise
        self._live, self._last = None, result
        core.observe(plan, result)
        await saver.save(core.reply_message(result))
        yield result


class _AsyncSaver:
    """Writes one growing answer: appended once, then replaced in place."""

    def __init__(self, session: AsyncChatSession, throttle: Throttle) -> None:
        self.session = session
        self.throttle = throttle
        self.index: int | None = None

    async def save(self, message: StoredMessage) -> None:
        """Write the answer, onto the fresh session after a harmless conflict (see
        `_Saver.save`)."""
        for _ in range(MAX_REBASES):
            try:
                await self._write(message)
                return
            except SessionConflictError:
                fresh = await self.session.store.aload(self.session.id)
                if not self.session._core.can_rebase(fresh, self.index):
                    raise
                self.session._core.record = fresh
        await self._write(message)

    async def _write(self, message: StoredMessage) -> None:
        if self.index is None:
            await self.session._append([message])
            self.index = len(self.session._core.record.messages) - 1
        else:
            await self.session._replace(self.index, message)

    async def save_partial(self, message: StoredMessage) -> None:
        if self.index is None and not worth_keeping(message):
            return
        try:
            await self.save(message)
        except Exception:  # the original error matters more than a failed save
            return
