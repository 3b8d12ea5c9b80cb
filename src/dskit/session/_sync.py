"""`ChatSession`: the synchronous shell. It moves bytes; `SessionCore` decides."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dskit._models import DEFAULT_MODEL
from dskit.client._errors import ContextOverflowError, ToolError, ValidationError
from dskit.client._streams import EventStream
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
    from dskit.client._sync import DeepSeek, Stream
    from dskit.store._base import SessionStore


class ChatSession(SessionViews):
    """A conversation that remembers: history fitted to the window, tools run, all saved.

    >>> s = ChatSession(client, system="You are terse.", store=SQLiteStore())
    >>> s.send("hello").content
    """

    def __init__(
        self,
        client: DeepSeek,
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
        # every setting is checked (by the core) before the store is touched
        self._core = SessionCore(
            record, tools=tools, policy=context, max_tool_rounds=max_tool_rounds
        )
        self.save_interval = check_save_interval(save_interval)
        existing = self._existing(session_id) if session_id is not None else None
        self._core.record = existing or self.store.create(record)

    def _existing(self, session_id: str) -> SessionRecord | None:
        try:
            return self.store.load(session_id)
        except SessionNotFoundError:
            return None

    @classmethod
    def load(
        cls, client: DeepSeek, session_id: str, *, store: SessionStore, **options: Any
    ) -> ChatSession:
        """Continue a stored session (SessionNotFoundError when there is none)."""
        store.load(session_id)
        return cls(client, store=store, session_id=session_id, **options)

    # ---- talking -------------------------------------------------------------------

    def send(self, text: str, **params: Any) -> ChatResult:
        """Ask, run any tools the model calls, and return its final answer (all saved)."""
        with self.stream(text, **params) as stream:
            return stream.final()

    def stream(self, text: str, **params: Any) -> SessionStream:
        """Like `send`, as the client's stream events; the answer is saved as it grows."""
        message = self._core.user_message(text)
        try:
            self._append([message])
        except SessionConflictError as conflict:  # nothing of this turn was written
            raise conflict.in_turn(self._reloaded(), question_stored=False) from None
        return SessionStream(self, params, fresh=True)

    def retry(self, **params: Any) -> ChatResult:
        """Drop everything after the last user message and ask again."""
        with self.retry_stream(**params) as stream:
            return stream.final()

    def retry_stream(self, **params: Any) -> SessionStream:
        """Like `retry`, as a stream: the old answer is dropped now, the question kept."""
        self._truncate(self._core.retry_length())
        return SessionStream(self, params)

    def configure(
        self,
        *,
        model: str | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the model, system prompt or request params of this session, for good.

        Saved in the store (so a reloaded session keeps them). `None` keeps a setting,
        `system=""` removes the prompt, and `params` merge into the stored ones (a `None`
        value drops a name). Checked first: a bad value raises ValidationError and
        nothing is written; another writer's change raises SessionConflictError.
        """
        core = self._core
        changes = core.header_update(model, system, params)
        if not changes:
            return
        record = core.record
        version = self.store.update(record.id, expected_version=record.version, **changes)
        core.configured(changes, version)

    def undo(self) -> list[dict[str, Any]]:
        """Remove the last turn (the last user message and its answers); returns it."""
        index, removed = self._core.last_turn()
        self._truncate(index)
        return removed

    def fork(self, *, session_id: str | None = None) -> ChatSession:
        """A copy of this conversation under a new id, in the same store, to go elsewhere."""
        copy = fork_record(self.store.load(self.id), session_id)
        self.store.create(copy)
        return ChatSession(
            self.client, store=self.store, session_id=copy.id, tools=self._core.tools.values(),
            context=self._core.policy, max_tool_rounds=self._core.max_tool_rounds,
            save_interval=self.save_interval,
        )  # fmt: skip

    def export(self) -> dict[str, Any]:
        """The versioned JSON-ready export (see `SessionStore.import_session`)."""
        return self.store.export_session(self.id)

    def reload(self) -> None:
        """Read the session again from the store (after a SessionConflictError)."""
        self._core.record = self.store.load(self.id)

    def _reloaded(self) -> SessionRecord:
        self.reload()
        return self._core.record

    # ---- store writes ----------------------------------------------------------------

    def _append(self, messages: list[StoredMessage]) -> None:
        record = self._core.record
        version = self.store.append(record.id, messages, expected_version=record.version)
        self._core.appended(messages, version)

    def _replace(self, index: int, message: StoredMessage) -> None:
        record = self._core.record
        version = self.store.replace(record.id, index, message, expected_version=record.version)
        self._core.replaced(index, message, version)

    def _truncate(self, length: int) -> None:
        record = self._core.record
        version = self.store.truncate(record.id, length, expected_version=record.version)
        self._core.truncated(length, version)

    # ---- the turn ------------------------------------------------------------------

    def _plan(self, params: Mapping[str, Any]) -> Plan:
        core = self._core
        core.model_info = self.client.model_info(core.record.model)
        plan = core.plan(params.get("max_tokens"))
        if not plan.summarize:
            return plan
        request = core.summary_request(plan)
        result = self.client.chat(request, **core.summary_params())
        self._append([core.summary_message(plan, result)])
        return core.plan(params.get("max_tokens"), allow_summary=False)

    def _run_tools(self, calls: list[ToolCall]) -> None:
        self._append([self._core.tool_message(call, self._run_tool(call)) for call in calls])

    def _run_tool(self, call: ToolCall) -> str:
        resolved = self._core.resolve(call)
        if isinstance(resolved, str):
            return resolved
        found, kwargs = resolved
        try:
            value = found.fn(**kwargs)
            if found.is_async:
                value = asyncio.run(value)
            return format_result(value)
        except Exception as exc:  # a tool's failure is the model's to read, not a crash
            return format_error(exc)


class SessionStream(EventStream[StreamEvent]):
    """The events of one turn (every model round of it) with the answer saved as it grows.

    An iterator and a context manager, like the client's stream; `final()` drains it and
    returns the last reply. Leaving early keeps what arrived, marked incomplete.
    """

    def __init__(
        self, session: ChatSession, params: Mapping[str, Any], *, fresh: bool = False
    ) -> None:
        self._session = session
        self._params = dict(params)
        self._fresh = fresh
        self._result: ChatResult | None = None
        self._live: Stream | None = None
        self._last: ChatResult | None = None
        self._events = self._run()

    def snapshot(self) -> ChatResult | None:
        """The reply streaming now, as far as it got (partial, usually without usage), or
        the last finished reply of this turn; None before anything was asked."""
        if self._live is not None:
            return self._live.snapshot()
        return self._last

    def final(self) -> ChatResult:
        for _ in self._events:
            pass
        if self._result is None:
            raise RuntimeError("the stream was closed before its answer finished")
        return self._result

    def _run(self) -> Generator[StreamEvent, None, None]:
        try:
            yield from self._turn()
        except SessionConflictError as conflict:  # the question is in the store
            if conflict.record is not None:
                raise
            fresh = self._session._reloaded()
            raise conflict.in_turn(fresh, question_stored=True) from None

    def _turn(self) -> Generator[StreamEvent, None, None]:
        session, core = self._session, self._session._core
        tool_round = 0
        while True:
            plan = self._first_plan() if tool_round == 0 else session._plan(self._params)
            params = core.request_params(self._params, tool_round)
            try:
                result = yield from self._one_reply(plan, params)
            except ValidationError:  # refused before sending: nothing was asked
                self._take_back(tool_round)
                raise
            calls = core.calls_to_run(result)
            if not calls:
                self._result = result
                return
            if core.over_limit(tool_round):
                session._append(core.limit_messages(calls))
                raise ToolError(f"the model kept calling tools after {tool_round} rounds")
            session._run_tools(calls)
            tool_round += 1

    def _first_plan(self) -> Plan:
        """The first request of a turn; a new question that cannot fit is taken back."""
        try:
            return self._session._plan(self._params)
        except ContextOverflowError:
            self._take_back(0)
            raise

    def _take_back(self, tool_round: int) -> None:
        """Remove a new question that could not be sent, so it is not left dangling."""
        if self._fresh and tool_round == 0:
            self._session._truncate(self._session._core.last_user_index())

    def _one_reply(
        self, plan: Plan, params: dict[str, Any]
    ) -> Generator[StreamEvent, None, ChatResult]:
        session, core = self._session, self._session._core
        saver = _Saver(session, Throttle(session.save_interval))
        with session.client.stream(plan.messages, **params) as stream:
            self._live = stream
            try:
                for event in stream:
                    if event.type in GROWING and saver.throttle.due():
                        saver.save(core.reply_message(stream.snapshot(), incomplete=True))
                    yield event
                result = stream.final()
            except BaseException:
                saver.save_partial(core.reply_message(stream.snapshot(), incomplete=True))
                raise
        self._live, self._last = None, result
        core.observe(plan, result)
        saver.save(core.reply_message(result))
        return result


class _Saver:
    """Writes one growing answer: appended once, then replaced in place."""

    def __init__(self, session: ChatSession, throttle: Throttle) -> None:
        self.session = session
        self.throttle = throttle
        self.index: int | None = None

    def save(self, message: StoredMessage) -> None:
        """Write the answer; after another writer's change that left this answer's place
        alone (see `SessionCore.can_rebase`), write it onto the fresh session."""
        for _ in range(MAX_REBASES):
            try:
                self._write(message)
                return
            except SessionConflictError:
                fresh = self.session.store.load(self.session.id)
                if not self.session._core.can_rebase(fresh, self.index):
                    raise
                self.session._core.record = fresh
        self._write(message)

    def _write(self, message: StoredMessage) -> None:
        if self.index is None:
            self.session._append([message])
            self.index = len(self.session._core.record.messages) - 1
        else:
            self.session._replace(self.index, message)

    def save_partial(self, message: StoredMessage) -> None:
        """On failure: keep what arrived, if anything did; never mask the first error."""
        if self.index is None and not worth_keeping(message):
            return
        try:
            self.save(message)
        except Exception:  # the original error matters more than a failed save
            return
