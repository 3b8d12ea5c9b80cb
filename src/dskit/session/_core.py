"""The one brain of a conversation, shared by the sync and async shells; it does no I/O.

It holds the record (history plus metadata), decides what to send (context fitting, the
reasoning rule, tool definitions), turns replies into stored messages, decides the next
step of the tool loop and keeps token counts and usage. The shells only move bytes: they
call the client, run tools and write to the store, in the order the core says.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from dskit._models import ModelInfo, migrate
from dskit._tokens import COUNTER, call_parts, content_text, prompt_overhead, tools_text
from dskit._validate import EFFORT_ALIASES, is_number
from dskit.client._core import API_PARAMS, check_chat_params
from dskit.client._errors import ContextOverflowError, ToolError, ValidationError
from dskit.client._types import ChatResult, ToolCall, Usage
from dskit.session._context import ContextPolicy, Fit, TokenCounter, fit_turns, group_turns
from dskit.session._memory import EntityMemory, MentionCache, note
from dskit.session._tools import Tool, format_error, tool_table
from dskit.store._base import header_changes
from dskit.store._model import SessionRecord, StoredMessage, title_from

WIRE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content")
SUMMARY_HEADER = "Summary of the earlier conversation (written by the model):\n"
SUMMARY_PROMPT = (
    "Summarize the conversation below for your own later use: keep names, numbers, "
    "decisions, open questions and what the user wants. Write plain prose, at most 200 words."
)
# every API parameter but `tools`, which the session builds from its own tool table
SESSION_PARAMS = (frozenset(API_PARAMS) - {"tools"}) | {"thinking", "effort"}
DEFAULT_TOOL_ROUNDS = 8
MAX_REBASES = 3  # an answer's save retried onto a fresh session after harmless conflicts


@dataclass(slots=True)
class Plan:
    """One request to send: wire messages, where they came from, what fitting decided."""

    messages: list[dict[str, Any]]
    sources: list[StoredMessage | None]
    fit: Fit
    summarize: list[int] = field(default_factory=list)
    covers: int = 0


def _check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(params) - SESSION_PARAMS
    if unknown:
        raise ValidationError(
            f"unknown session parameter(s): {', '.join(sorted(unknown))}", param="params"
        )
    return dict(params)


class SessionCore:
    """State and decisions of one conversation."""

    def __init__(
        self,
        record: SessionRecord,
        *,
        tools: Iterable[Tool | Any] = (),
        wire_tools: Sequence[Mapping[str, Any]] = (),
        policy: ContextPolicy | None = None,
        max_tool_rounds: int = DEFAULT_TOOL_ROUNDS,
    ) -> None:
        if not isinstance(max_tool_rounds, int) or max_tool_rounds < 1:
            raise ValidationError("max_tool_rounds must be a positive integer")
        self.record = record
        self.tools = tool_table(tools)
        # The `tools` entries sent with every request, built once: the tools are fixed.
        # `wire_tools`: definitions in API form whose calls someone else runs (the gateway).
        self.definitions = [t.definition() for t in self.tools.values()]
        self.definitions += [dict(d) for d in wire_tools]
        # ...and as a pseudo-message (none without tools): they count against the prompt too.
        self._tools_wire: list[dict[str, Any]] = (
            [{"role": "system", "content": tools_text(self.definitions)}]
            if self.definitions
            else []
        )
        self._check_values(_check_params(record.params), record.model)
        self.policy = policy or ContextPolicy()
        self.max_tool_rounds = max_tool_rounds
        self.counter = TokenCounter()
        # Exact sizes of the system head and the tool definitions, by their text: a new
        # summary or tool set changes the text, and the size is estimated again.
        self.fixed_tokens: dict[str, int] = {}
        self.usage_total = Usage()
        # what `GET /models` says of the model (the shells ask the client before each
        # turn); None: the sheet's figures
        self.model_info: ModelInfo | None = None
        # what each stored message names, for the "known so far" note (memory on)
        self._mentions = MentionCache()

    # ---- views -----------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation as wire dicts: system first, summaries left out."""
        head = [{"role": "system", "content": self.record.system}] if self.record.system else []
        body = [dict(m.message) for m in self.record.messages if not m.summary]
        return head + body

    def effective(self) -> tuple[StoredMessage | None, list[int]]:
        """The latest summary (if any) and the indices of the messages it does not cover."""
        stored = self.record.messages
        summaries = [i for i, m in enumerate(stored) if m.summary]
        summary = stored[summaries[-1]] if summaries else None
        start = summary.covers if summary else 0
        return summary, [i for i in range(start, len(stored)) if not stored[i].summary]

    # ---- building a request ------------------------------------------------------------

    def _head(self, summary: StoredMessage | None, note: str = "") -> list[dict[str, Any]]:
        parts = [self.record.system or ""]
        if summary is not None:
            parts.append(SUMMARY_HEADER + summary.content)
        parts.append(note)
        text = "\n\n".join(p for p in parts if p)
        return [{"role": "system", "content": text}] if text else []

    @property
    def thinking(self) -> bool:
        """Whether this session's turns run in thinking mode (the API's default is on;
        a session saved under a retired name keeps what that name meant)."""
        chosen = self.record.params.get("thinking")
        if isinstance(chosen, bool):
            return chosen
        implied = migrate(self.record.model)[1]
        return True if implied is None else implied

    @property
    def effort(self) -> str | None:
        effort = self.record.params.get("effort")
        return EFFORT_ALIASES.get(effort) if isinstance(effort, str) else None

    def _wires(self, indices: Sequence[int]) -> list[dict[str, Any] | None]:
        # DeepSeek's rule (Nov 2026): with tools in thinking mode, the reasoning of every
        # earlier assistant turn goes back; otherwise none does.
        keep = self.thinking and bool(self.definitions)
        return [wire_message(self.record.messages[i], keep) for i in indices]

    def plan(self, max_tokens: int | None = None, *, allow_summary: bool = True) -> Plan:
        """What to send now, fitted to the budget (may ask for a summary first)."""
        summary, indices = self.effective()
        pairs = [(i, w) for i, w in zip(indices, self._wires(indices), strict=True) if w]
        wires = [w for _, w in pairs]
        stored = [self.record.messages[i] for i, _ in pairs]
        costs = [self.counter.cost(s.tokens, w) for s, w in zip(stored, wires, strict=True)]
        strategy = self.policy.strategy
        if strategy == "summarize" and not allow_summary:
            strategy = "window"
        budget = self._budget(max_tokens or self._max_tokens())
        fitter = partial(
            fit_turns, costs, group_turns(wires), budget=budget,
            max_turns=self.policy.max_turns, strategy=strategy,
        )  # fmt: skip
        head = self._head(summary)
        fit = fitter(fixed=self._fixed(head))
        memory = self.policy.entity_memory
        if memory is not None and fit.start > 0:
            head, fit = self._with_note(summary, fit, fitter, [i for i, _ in pairs], memory)
        plan = Plan(head + wires[fit.start :], [None] * len(head) + stored[fit.start :], fit)
        if strategy == "summarize" and fit.dropped_for_budget:
            plan.summarize = [i for i, _ in pairs[: fit.start]]
            plan.covers = pairs[fit.start][0] if fit.start < len(pairs) else len(indices)
        return plan

    def _fixed(self, head: Sequence[Mapping[str, Any]]) -> int:
        """What every request sends besides the turns: head, tool definitions, template."""
        fixed = sum(self._fixed_cost(w) for w in (*head, *self._tools_wire))
        return fixed + prompt_overhead(self.thinking)

    def _with_note(
        self, summary: StoredMessage | None, fit: Fit, fitter: Callable[..., Fit],
        sent: Sequence[int], memory: EntityMemory,
    ) -> tuple[list[dict[str, Any]], Fit]:  # fmt: skip
        """The head with the "known so far" note of the turns the fit drops, and a fit
        that pays for the note: when the note pushes one more turn out, the note is made
        again with it; when even the latest turn cannot stay beside it, its token bound is
        halved. The first kept turn only moves forward and the bound only shrinks, so this
        ends; with no room left at all the request goes without a note."""
        start = fit.start
        while True:
            head = self._head(summary, self._note(sent[:start], memory))
            try:
                refit = fitter(fixed=self._fixed(head))
            except ContextOverflowError:
                if memory.max_tokens == 1:
                    return self._head(summary), fit
                memory = replace(memory, max_tokens=memory.max_tokens // 2)
                continue
            if refit.start <= start:
                dropped = fit.dropped_for_budget or refit.dropped_for_budget
                return head, Fit(refit.start, refit.tokens, dropped)
            start = refit.start

    def _note(self, dropped: Sequence[int], memory: EntityMemory) -> str:
        """The note for these stored messages (their mentions cached per message)."""
        stored = self.record.messages
        turns = list(itertools.accumulate(int(m.role == "user") for m in stored))
        found = [
            (max(turns[i], 1), self._mentions.mentions(stored[i], memory_text(stored[i])))
            for i in dropped
            if stored[i].role != "system"
        ]
        if len(self._mentions) > len(stored):
            self._mentions.prune(stored)
        return note(found, memory)

    def _fixed_cost(self, wire: Mapping[str, Any]) -> int:
        """The size of the system head or the tool definitions (exact once observed)."""
        return self.counter.cost(self.fixed_tokens.get(wire["content"]), wire)

    def _budget(self, max_tokens: int | None) -> int:
        return self.policy.budget(
            self.record.model, max_tokens, thinking=self.thinking, effort=self.effort,
            info=self.model_info,
        )  # fmt: skip

    def _max_tokens(self) -> int | None:
        value = self.record.params.get("max_tokens")
        return value if isinstance(value, int) else None

    def request_params(self, params: Mapping[str, Any], tool_round: int) -> dict[str, Any]:
        """Keyword arguments for `client.chat` / `client.stream`."""
        merged: dict[str, Any] = {"model": self.record.model, **self.record.params, **params}
        if self.tools:
            merged["tools"] = self.definitions
            if tool_round >= self.max_tool_rounds:
                merged["tool_choice"] = "none"
            elif tool_round > 0 and merged.get("tool_choice") not in (None, "none", "auto"):
                merged["tool_choice"] = "auto"  # a forced call is made once, not forever
        return merged

    # ---- settings ------------------------------------------------------------------

    def header_update(
        self, model: str | None, system: str | None, params: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The store `update` a `configure` makes, checked before anything is written.

        `None` keeps a setting; `system=""` removes the system prompt; `params` are merged
        into the stored ones, and a `None` value drops that name (back to the default).
        """
        header_changes(model, system, None, None)  # the store's own checks, up front
        # `system=""` stays "" here: the store's `update` reads `None` as "keep it"
        changes: dict[str, Any] = {
            k: v for k, v in (("model", model), ("system", system)) if v is not None
        }
        if params is not None:
            changes["params"] = self._merged_params(params, changes.get("model"))
        return changes

    def _merged_params(self, params: Mapping[str, Any], model: str | None) -> dict[str, Any]:
        if not isinstance(params, Mapping):
            raise ValidationError("params must be a mapping of names to values", param="params")
        merged = dict(self.record.params)
        for name, value in _check_params(params).items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        self._check_values(merged, model or self.record.model)
        return merged

    def _check_values(self, params: Mapping[str, Any], model: str) -> None:
        """The client's own request rules, applied now: a bad value stored would make
        every later turn of the session fail."""
        probe: dict[str, Any] = {"model": model, **params}
        if self.tools:
            probe["tools"] = self.definitions
        check_chat_params(probe)

    def configured(self, changes: Mapping[str, Any], version: int) -> None:
        """Mirror a successful store `update`."""
        self.record.version = version
        for name, value in changes.items():
            setattr(self.record, name, (value or None) if name == "system" else value)

    # ---- retrying ------------------------------------------------------------------

    def retry_length(self) -> int:
        """How much history a retry keeps: everything up to the last user message."""
        return self.last_user_index() + 1

    # ---- replies ---------------------------------------------------------------------

    def appended(self, messages: Sequence[StoredMessage], version: int) -> None:
        """Mirror a successful store append (the store titles a session the same way)."""
        self.record.version = version
        self.record.messages.extend(messages)
        self.record.title = self.record.title or title_from(self.record.messages)

    def replaced(self, index: int, message: StoredMessage, version: int) -> None:
        """Mirror a successful store replace."""
        self.record.version = version
        self.record.messages[index] = message

    def truncated(self, length: int, version: int) -> None:
        """Mirror a successful store truncate."""
        self.record.version = version
        del self.record.messages[length:]

    def can_rebase(self, fresh: SessionRecord, index: int | None) -> bool:
        """After a conflict while saving an answer: whether the save may go onto `fresh`.

        It may when the other writer left alone what the save depends on: for the first
        save (`index` None, an append) the history still ends with this turn's last
        message; for a later one, the message at `index` is still this answer as last
        saved. Then the answer lands where it belongs and no orphan partial is left.
        """
        return rebases(self.record.messages, fresh.messages, index)

    def user_message(self, text: Any) -> StoredMessage:
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("a message must be a non-empty string", param="text")
        return StoredMessage({"role": "user", "content": text})

    def observe(self, plan: Plan, result: ChatResult) -> None:
        """Learn exact token counts from the reply's usage and add it to the total."""
        if result.usage is None:
            return
        self.usage_total = self.usage_total + result.usage
        wires = [*plan.messages, *self._tools_wire]
        sources = [*plan.sources, *(None for _ in self._tools_wire)]
        known = [
            s.tokens if s is not None else self.fixed_tokens.get(w["content"])
            for s, w in zip(sources, wires, strict=True)
        ]
        sent = result.usage.prompt_tokens - prompt_overhead(self.thinking)
        exact = self.counter.attribute(known, wires, sent)
        self.fixed_tokens = {}
        for source, wire, tokens in zip(sources, wires, exact, strict=True):
            if source is None:
                self.fixed_tokens[wire["content"]] = tokens
            else:
                source.tokens = tokens

    @staticmethod
    def reply_message(result: ChatResult, *, incomplete: bool = False) -> StoredMessage:
        """The stored form of a reply. Its size stays an estimate until it is sent back:
        `completion_tokens` counts the reasoning and the generation, not the message as the
        next prompt will count it, so the next reply's `prompt_tokens` settles it."""
        usage = result.usage
        return StoredMessage(
            result.to_message(),
            incomplete=incomplete,
            usage=usage.to_dict() if usage is not None else None,
        )

    def calls_to_run(self, result: ChatResult) -> list[ToolCall]:
        return list(result.tool_calls)

    def over_limit(self, tool_round: int) -> bool:
        """Whether the model asked for tools after its last allowed round."""
        return tool_round >= self.max_tool_rounds

    def resolve(self, call: ToolCall) -> tuple[Tool, dict[str, Any]] | str:
        """The tool and its arguments, or the error text to send back instead."""
        found = self.tools.get(call.name)
        if found is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return format_error(ToolError(f"no tool named {call.name!r} (tools: {known})"))
        try:
            return found, found.parse(call.arguments)
        except ToolError as exc:
            return format_error(exc)

    def tool_message(self, call: ToolCall, content: str) -> StoredMessage:
        return StoredMessage({"role": "tool", "tool_call_id": call.id, "content": content})

    def limit_messages(self, calls: Sequence[ToolCall]) -> list[StoredMessage]:
        error = format_error(ToolError(f"tool round limit ({self.max_tool_rounds}) reached"))
        return [self.tool_message(call, error) for call in calls]

    # ---- history edits -------------------------------------------------------------

    def last_turn(self) -> tuple[int, list[dict[str, Any]]]:
        """Where the last turn starts, and its messages (what `undo` removes and returns)."""
        index = self.last_user_index()
        return index, [dict(m.message) for m in self.record.messages[index:]]

    def last_user_index(self) -> int:
        for index in range(len(self.record.messages) - 1, -1, -1):
            if self.record.messages[index].role == "user":
                return index
        raise ValidationError("the conversation has no user message yet")

    # ---- summaries -----------------------------------------------------------------

    def summary_request(self, plan: Plan) -> list[dict[str, Any]]:
        summary, _ = self.effective()
        lines = [f"Earlier summary: {summary.content}"] if summary else []
        for index in plan.summarize:
            lines.append(transcript_line(self.record.messages[index]))
        text = _cut_to_tokens("\n".join(lines), self.policy.budget(self.record.model) // 2)
        return [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": text}]

    def summary_params(self) -> dict[str, Any]:
        """A short summary: at most a quarter of the budget, so the rest still fits."""
        budget = self._budget(self._max_tokens())
        return {"model": self.record.model, "max_tokens": max(64, min(budget // 4, 1024))}

    def summary_message(self, plan: Plan, result: ChatResult) -> StoredMessage:
        """The stored summary; its usage counts toward the session's total."""
        self.usage_total = self.usage_total + (result.usage or Usage())
        message = {"role": "system", "content": result.content.strip() or "(empty summary)"}
        usage = result.usage.to_dict() if result.usage else None
        return StoredMessage(message, summary=True, covers=plan.covers, usage=usage)


def rebases(
    mine: Sequence[StoredMessage], theirs: Sequence[StoredMessage], index: int | None
) -> bool:
    """`SessionCore.can_rebase` over two histories (the writer's and the store's): the
    rule every writer of a growing answer (a session, the gateway) follows."""
    if index is None:
        return len(theirs) == len(mine) and _same(theirs[-1:], mine[-1:])
    return index < len(theirs) and index < len(mine) and _same([theirs[index]], [mine[index]])


def _same(a: Sequence[StoredMessage], b: Sequence[StoredMessage]) -> bool:
    return [m.to_dict() for m in a] == [m.to_dict() for m in b]


def wire_message(stored: StoredMessage, keep_reasoning: bool) -> dict[str, Any] | None:
    """The dict sent to the API for a stored message, or None when it must be left out.

    Reasoning is always stored; it is resent only when `keep_reasoning` (tools in
    thinking mode, where the API requires it on every assistant turn: a turn that had
    none sends an empty one). An incomplete answer is resent as text only: its tool
    calls never got results.
    """
    wire = {k: v for k, v in stored.message.items() if k in WIRE_KEYS}
    if not keep_reasoning:
        wire.pop("reasoning_content", None)
    elif wire.get("role") == "assistant" and wire.get("reasoning_content") is None:
        wire["reasoning_content"] = ""
    if stored.incomplete:
        wire.pop("tool_calls", None)
        if not wire.get("content"):
            return None
    return wire


def memory_text(stored: StoredMessage) -> str:
    """What the entity memory reads of a message: its text and its tool calls' arguments."""
    calls = stored.message.get("tool_calls") or ()
    return "\n".join(
        [content_text(stored.message.get("content")), *(call_parts(c)[1] for c in calls)]
    )


def transcript_line(stored: StoredMessage) -> str:
    calls = stored.message.get("tool_calls") or []
    names = ", ".join(str((c.get("function") or {}).get("name")) for c in calls)
    text = stored.content + (f" [called {names}]" if names else "")
    return f"{stored.role}: {text}"


def _cut_to_tokens(text: str, tokens: int) -> str:
    """Keep the end of `text` (the most recent part) within `tokens` tokens."""
    return COUNTER.tail(text, tokens)


def new_record(
    session_id: str | None, model: str, system: str | None, params: Mapping[str, Any]
) -> SessionRecord:
    header_changes(model, system, params, None)  # the store's own checks, before it writes
    record = SessionRecord(model=model, system=system or None, params=_check_params(params))
    if session_id is not None:
        record.id = session_id
    record.created = record.updated = time.time()
    return record


def fork_record(record: SessionRecord, session_id: str | None) -> SessionRecord:
    """A copy of a stored conversation under a new id (what `fork` creates)."""
    copy = new_record(session_id, record.model, record.system, record.params)
    copy.messages, copy.title = record.messages, record.title
    return copy


def worth_keeping(partial: StoredMessage) -> bool:
    """Whether a cut-off answer brought anything (text or reasoning) worth saving."""
    return bool(partial.content or partial.message.get("reasoning_content"))


SAVE_INTERVAL = 0.5
MAX_SAVE_INTERVAL = 1.0
# the stream events that grow the answer being saved
GROWING = ("content", "reasoning", "tool_call")


def check_save_interval(value: Any) -> float:
    """A crash may lose at most this much of a streamed answer: at most one second."""
    if not is_number(value):
        raise ValidationError("save_interval must be a number of seconds", param="save_interval")
    if not 0 < value <= MAX_SAVE_INTERVAL:
        raise ValidationError(
            f"save_interval must be in (0, {MAX_SAVE_INTERVAL:g}] seconds, got {value!r}",
            param="save_interval",
        )
    return float(value)


class Throttle:
    """When a growing answer is due to be saved again: first at once, then every interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False


class SessionViews:
    """The read-only views both session shells offer, over their `SessionCore`."""

    _core: SessionCore

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(id={self.id!r}, model={self.model!r}, messages={len(self.history)})"

    @property
    def id(self) -> str:
        return self._core.record.id

    @property
    def model(self) -> str:
        return self._core.record.model

    @property
    def system(self) -> str | None:
        return self._core.record.system

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._core.record.params)

    @property
    def thinking(self) -> bool:
        """Whether this session's answers come in thinking mode (DeepSeek's default)."""
        return self._core.thinking

    @property
    def title(self) -> str:
        return self._core.record.title

    @property
    def version(self) -> int:
        return self._core.record.version

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation as wire dicts (system first; reasoning kept for display)."""
        return self._core.messages

    @property
    def history(self) -> list[StoredMessage]:
        """Every stored message with its metadata (incomplete, summary, usage, tokens)."""
        return list(self._core.record.messages)

    @property
    def usage_total(self) -> Usage:
        return self._core.usage_total
