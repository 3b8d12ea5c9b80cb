"""Showing a streamed answer: rich Markdown in a terminal, plain text or JSON lines elsewhere.

The rich view keeps re-rendering cheap on long answers: finished Markdown blocks (up to
a blank line outside a code fence) are printed once, for good, and only the block still
growing lives in the `Live` area, rebuilt at most `REFRESH_HZ` times a second. So a long
answer costs about the same per token as a short one, and nothing taller than the screen
is ever redrawn.
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson

from dskit.cli._pricing import estimated_footer, footer
from dskit.cli._safe import json_visible, visible
from dskit.client._types import (
    ChatResult,
    ContentDelta,
    KeepAlive,
    ReasoningDelta,
    Resumed,
    Retrying,
    StreamEvent,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

REFRESH_HZ = 15.0
INTERRUPTED = "[interrupted: the answer stopped here; the partial answer is kept]"
FENCES = ("```", "~~~")


class View(Protocol):
    """Something that shows one answer as its events arrive."""

    def __enter__(self) -> View: ...
    def __exit__(self, *exc: object) -> None: ...
    def handle(self, event: StreamEvent) -> None: ...
    def finish(self, result: ChatResult | None, *, note: str | None = None) -> None: ...


def stable_length(text: str) -> int:
    """How much of `text` is finished Markdown blocks: up to the last blank line outside a
    code fence, or the end of the last closed fence."""
    cut = pos = 0
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        end = pos + len(line)
        stripped = line.lstrip()
        complete = line.endswith("\n")
        if fence is None:
            if stripped.startswith(FENCES):
                fence = stripped[:3]
            elif complete and not stripped.strip() and pos > 0:
                cut = end
        elif complete and stripped.rstrip().startswith(fence) and not stripped[3:].strip("`~ \n"):
            fence = None
            cut = end
        pos = end
    return cut


def result_dict(result: ChatResult) -> dict[str, Any]:
    """A ChatResult as JSON-ready data (what `ask --json` prints)."""
    return {
        "id": result.id,
        "model": result.model,
        "content": result.content,
        "reasoning_content": result.reasoning_content,
        "tool_calls": [call.to_dict() for call in result.tool_calls],
        "finish_reason": result.finish_reason,
        "usage": result.usage.to_dict() if result.usage else None,
        "resumes": result.resumes,
    }


def event_dict(event: StreamEvent) -> dict[str, Any]:
    """One stream event as JSON-ready data (what `ask --jsonl` prints per line)."""
    if event.type == "done":
        return {"type": "done", "result": result_dict(event.result)}
    if event.type == "usage":
        return {"type": "usage", "usage": event.usage.to_dict()}
    data = {k: getattr(event, k) for k in event.__slots__ if k != "type"}
    return {"type": event.type, **data}


def dumps_line(data: Any) -> str:
    return json_visible(orjson.dumps(data).decode())


class JsonLinesView:
    """One JSON object per event on stdout, flushed as it arrives (for scripts)."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout

    def __enter__(self) -> JsonLinesView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def handle(self, event: StreamEvent) -> None:
        self.out.write(dumps_line(event_dict(event)) + "\n")
        self.out.flush()

    def finish(self, result: ChatResult | None, *, note: str | None = None) -> None:
        if note:
            self.out.write(dumps_line({"type": "interrupted", "note": note}) + "\n")
            self.out.flush()


class PlainView:
    """The answer's text as it arrives, nothing else on stdout (for pipes and files).

    Thinking goes to stderr when asked for; notes (retries, interruptions) too.
    """

    def __init__(self, *, think: bool = False, out: IO[str] | None = None) -> None:
        self.think = think
        self.out = out or sys.stdout
        self.ended_with_newline = True

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def handle(self, event: StreamEvent) -> None:
        if isinstance(event, ContentDelta) and event.text:
            self.out.write(visible(event.text))
            self.out.flush()
            self.ended_with_newline = event.text.endswith("\n")
        elif isinstance(event, ReasoningDelta) and self.think:
            sys.stderr.write(visible(event.text))
        elif isinstance(event, Retrying):
            sys.stderr.write(f"retrying in {event.delay:.1f}s: {visible(event.reason)}\n")

    def finish(self, result: ChatResult | None, *, note: str | None = None) -> None:
        if not self.ended_with_newline:
            self.out.write("\n")
            self.out.flush()
        if note:
            sys.stderr.write(note + "\n")


class RichView:
    """Markdown rendered as it grows, a spinner that says what is going on, dimmed
    thinking above the answer, and a footer with tokens and a cost estimate."""

    def __init__(self, console: Console, *, model: str, think: bool = True) -> None:
        self.console = console
        self.model = model
        self.think = think
        self.status = "waiting for the answer"
        self.reasoning = ""  # not yet printed
        self.content = ""  # not yet printed
        self.started = False
        self._last = 0.0
        self._live: Live | None = None

    def __enter__(self) -> RichView:
        # Imported now, not at the first token: a Ctrl-C landing inside a first import
        # leaves the module half-built, and finish() would then fail to render.
        import rich.markdown  # noqa: F401
        from rich.live import Live

        self._live = Live(
            self._renderable(), console=self.console, transient=True,
            refresh_per_second=REFRESH_HZ, redirect_stdout=False, redirect_stderr=False,
        )  # fmt: skip
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.__exit__(None, None, None)

    # ---- events ----------------------------------------------------------------------

    def handle(self, event: StreamEvent) -> None:
        if isinstance(event, ContentDelta):
            self.content += event.text
            self.started, self.status = True, ""
            self._refresh()
            return
        if isinstance(event, ReasoningDelta):
            if self.think:
                self.reasoning += event.text
            self.started, self.status = True, "thinking"
            self._refresh()
            return
        status = self._status_for(event)
        if status is not None:
            self.status = status
            self._refresh(force=True)

    def _status_for(self, event: StreamEvent) -> str | None:
        if isinstance(event, KeepAlive):
            return None if self.started else "queueing: the server is busy, waiting for capacity"
        if isinstance(event, Retrying):
            return f"retrying in {event.delay:.0f}s ({_short(event.reason)})"
        if isinstance(event, Resumed):
            return f"resuming the answer (attempt {event.attempt}) after a broken stream"
        return None

    def _refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._live is None or (not force and now - self._last < 1 / REFRESH_HZ):
            return
        self._last = now
        self._flush_stable()
        self._live.update(self._renderable(), refresh=force)

    def _flush_stable(self) -> None:
        """Print finished blocks for good, so the live area stays small."""
        if self.reasoning and self.content:
            self._print_reasoning(self.reasoning)
            self.console.print()
            self.reasoning = ""
        elif self.reasoning:
            cut = self.reasoning.rfind("\n") + 1
            if cut:
                self._print_reasoning(self.reasoning[:cut])
                self.reasoning = self.reasoning[cut:]
        cut = stable_length(self.content)
        if cut:
            self._print_markdown(self.content[:cut])
            self.content = self.content[cut:]

    def _print_reasoning(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(visible(text.rstrip("\n")), style="dim italic"))

    def _print_markdown(self, text: str) -> None:
        if text.strip():
            self.console.print(_markdown(text))
            self.console.print()

    def _renderable(self) -> RenderableType:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.text import Text

        parts: list[RenderableType] = []
        if self.reasoning:
            parts.append(Text(visible(self.reasoning), style="dim italic"))
        if self.content.strip():
            parts.append(_markdown(self.content))
        if self.status or not self.started:
            parts.append(Spinner("dots", Text(self.status, style="dim")))
        return Group(*parts)

    # ---- the end ---------------------------------------------------------------------

    def finish(self, result: ChatResult | None, *, note: str | None = None) -> None:
        """Stop the live area and print what is left, then the note or the footer."""
        self._stop()
        if self.reasoning:
            self._print_reasoning(self.reasoning)
            if self.content.strip():
                self.console.print()
        if self.content.strip():
            self.console.print(_markdown(self.content))
        self.reasoning = self.content = ""
        if note:
            self.console.print(note, style="bold yellow", markup=False, highlight=False)
        text = self._footer(result)
        if text:
            self.console.print(text, style="dim", markup=False, highlight=False)

    def _footer(self, result: ChatResult | None) -> str | None:
        """Tokens and cost from the usage, or tokens estimated when it never came."""
        if result is None:
            return None
        if result.usage is None:
            return estimated_footer(result)
        return footer(result.usage, result.model or self.model)


def _markdown(text: str) -> RenderableType:
    from rich.markdown import Markdown

    return Markdown(visible(text), code_theme="monokai")


def _short(reason: str, limit: int = 60) -> str:
    reason = visible(reason)
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def make_console(file: IO[str] | None = None, *, force_terminal: bool | None = None) -> Console:
    """A rich console that honours NO_COLOR and non-terminal output (rich does both)."""
    from rich.console import Console

    return Console(file=file, force_terminal=force_terminal, highlight=False)
