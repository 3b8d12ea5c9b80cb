"""One turn, shown as it streams: shared by `dskit chat` and `dskit ask`.

The session saves the answer as it grows; leaving the stream early (Ctrl-C) makes it save
what arrived, marked incomplete. This module only drives the view and reports how the
turn ended, so the commands can pick their own exit code or carry on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dskit.cli._render import INTERRUPTED, View
from dskit.client._errors import IncompleteStreamError
from dskit.client._types import ChatResult

if TYPE_CHECKING:
    from dskit.session import SessionStream

CUT_REASONS = {
    "length": "[incomplete: the answer reached max_tokens]",
    "content_filter": "[incomplete: the answer was stopped by the content filter]",
    "insufficient_system_resource": "[incomplete: the server ran out of capacity]",
    "aborted": "[incomplete: the server aborted the answer]",
}


@dataclass(slots=True)
class Outcome:
    """How a turn ended: its result (partial when cut), and whether it is complete."""

    result: ChatResult | None
    interrupted: bool = False
    cut: str | None = None

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.cut is None


@contextmanager
def quiet_keyboard() -> Iterator[None]:
    """Stop the terminal echoing keys (Ctrl-C's `^C` too) while an answer streams: an echo
    would shift the live area and leave a duplicate of it on screen."""
    try:
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
    except (ImportError, OSError, ValueError):  # no termios (Windows), or no real stdin
        saved = None
    if saved is None:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def run_turn(start: Callable[[], SessionStream], view: View) -> Outcome:
    """Stream one answer into `view`. Ctrl-C ends it early and keeps what arrived (shown
    with its footer, from the stream's snapshot); an incomplete stream is shown, then
    re-raised for the caller's exit code."""
    stream: SessionStream | None = None
    with quiet_keyboard(), view:
        try:
            stream = start()
            with stream:
                for event in stream:
                    view.handle(event)
        except KeyboardInterrupt:
            partial = stream.snapshot() if stream is not None else None
            view.finish(partial, note=INTERRUPTED)
            return Outcome(partial, interrupted=True)
        except IncompleteStreamError as exc:
            view.finish(exc.partial, note=f"[incomplete: {exc.cause}]")
            raise
        result = stream.snapshot()
        cut = CUT_REASONS.get(result.finish_reason or "") if result else None
        view.finish(result, note=cut)
    return Outcome(result, cut=cut)
