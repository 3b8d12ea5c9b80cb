"""The REPL's slash commands: one small function each, found through one table."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dskit.cli._chat import ChatState
from dskit.cli._pricing import estimate_cost, format_cost
from dskit.cli._sessions import resolve, to_markdown, when
from dskit.client._errors import DSKitError
from dskit.client._types import Usage
from dskit.config import check_effort, parse_temperature
from dskit.store._model import SessionConflictError

if TYPE_CHECKING:
    from dskit.session import ChatSession

Handler = Callable[[ChatState, str], None]


def cmd_help(state: ChatState, arg: str) -> None:
    lines = [f"  /{name:<12} {doc}" for name, (_, doc) in sorted(COMMANDS.items())]
    lines.append(
        "  /model, /system and /temperature are saved with the session: --continue keeps them"
    )
    lines.append("  Enter sends · Esc Enter: new line · Ctrl-C stops an answer · Ctrl-D quits")
    state.say("\n".join(lines), style="")


def cmd_new(state: ChatState, arg: str) -> None:
    state.new_session()
    state.say("New session (saved when you send the first message), with the same settings.")


def cmd_sessions(state: ChatState, arg: str) -> None:
    limit = int(arg) if arg.isdigit() and int(arg) > 0 else 10
    found = state.store.list_sessions(limit)
    if not found:
        state.say("No sessions yet.")
    for info in found:
        current = "*" if state.session and info.id == state.session.id else " "
        title = info.title or "(untitled)"
        count = info.message_count
        state.say(f"{current} {info.id[:12]}  {when(info.updated)}  {count:>3}  {title}")


def cmd_load(state: ChatState, arg: str) -> None:
    if not arg:
        state.say("Usage: /load ID (see /sessions)")
        return
    session = state.load(resolve(state.store, arg).id)
    state.say(f"Loaded session {session.id[:12]}: {session.title} ({len(session.history)} msgs)")


def _saved_where(state: ChatState) -> str:
    if state.session is None:
        return "for the new session, started with your next message"
    return f"saved with session {state.session.id[:12]}"


def cmd_system(state: ChatState, arg: str) -> None:
    """Show, set or (with `-`) remove the system prompt of the current session."""
    if not arg:
        state.say(f"System prompt: {state.current_system or '(none)'}")
        return
    text = "" if arg == "-" else arg
    if state.session is not None:
        state.session.configure(system=text)
    else:
        state.system = text or None
    done = "removed" if not text else "set"
    state.say(f"System prompt {done} ({_saved_where(state)}).")


def cmd_model(state: ChatState, arg: str) -> None:
    if not arg:
        state.say(f"Model: {state.current_model}")
        return
    state.backend.client.require_model(arg)  # a typo is refused, not saved
    if state.session is not None:
        state.session.configure(model=arg)
    else:
        state.model = arg
    state.say(f"Model: {state.current_model} ({_saved_where(state)})")


def cmd_effort(state: ChatState, arg: str) -> None:
    """Show or set the reasoning effort (`/effort low|high|max`, or `default`); saved."""
    if not arg:
        state.say(f"Effort: {state.current_effort or 'default (high)'}")
        return
    value = None if arg == "default" else check_effort(arg)
    if state.session is not None:
        state.session.configure(params={"effort": value})
    else:
        state.set_param("effort", value)
    state.say(f"Effort: {state.current_effort or 'default (high)'} ({_saved_where(state)})")


def cmd_temperature(state: ChatState, arg: str) -> None:
    if arg:
        value = None if arg == "default" else parse_temperature(arg)
        if state.session is not None:
            state.session.configure(params={"temperature": value})
        else:
            state.set_param("temperature", value)
    current = state.current_temperature
    shown = "default" if current is None else f"{current:g}"
    where = f" ({_saved_where(state)})" if arg else ""
    state.say(f"Temperature: {shown}{where}")


def cmd_think(state: ChatState, arg: str) -> None:
    """Thinking mode on or off (`/think on|off`; no argument toggles it)."""
    if arg not in ("", "on", "off"):
        state.say("Usage: /think [on|off]")
        return
    value = arg == "on" if arg else not state.current_thinking
    if state.session is not None:
        state.session.configure(params={"thinking": value})
    else:
        state.set_param("thinking", value)
    state.think = value
    state.say(f"Thinking mode {'on' if value else 'off'} ({_saved_where(state)}).")


def cmd_undo(state: ChatState, arg: str) -> None:
    if state.session is None:
        state.say("Nothing to undo.")
        return
    removed = state.session.undo()
    question = next((m.get("content") for m in removed if m.get("role") == "user"), "")
    state.say(f"Removed the last turn ({len(removed)} messages): {str(question)[:60]}")


def cmd_retry(state: ChatState, arg: str) -> None:
    """Ask the last question again, streamed: the old answer is replaced."""
    session = state.session
    question = _last_question(session) if session is not None else None
    if session is None or question is None:
        state.say("Nothing to retry.")
        return
    state.say(f"Retrying: {question[:60]}")
    state.stream_turn(lambda: session.retry_stream(**state.request_params()))


def _last_question(session: ChatSession) -> str | None:
    users = [m.content for m in session.history if m.role == "user"]
    return users[-1] if users else None


def cmd_export(state: ChatState, arg: str) -> None:
    if state.session is None:
        state.say("Nothing to export yet.")
        return
    path = Path(arg or f"dskit-{state.session.id[:12]}.json").expanduser()
    if path.suffix.lower() in (".md", ".markdown"):
        text = to_markdown(state.store.load(state.session.id))
    else:
        text = json.dumps(state.session.export(), ensure_ascii=False, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")
    state.say(f"Exported to {path}")


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def cmd_usage(state: ChatState, arg: str) -> None:
    if state.session is None:
        state.say("No tokens used yet in this session.")
        return
    total, cost = Usage(), 0.0
    for stored in state.session.history:
        if stored.usage:
            usage = Usage.from_dict(stored.usage)
            total = total + usage
            cost += estimate_cost(usage, state.current_model, _utc(stored.created))
    state.say(
        f"Session {state.session.id[:12]}: {total.prompt_tokens} tokens in "
        f"({total.prompt_cache_hit_tokens} cache hits), {total.completion_tokens} out, "
        f"~{format_cost(cost)} (estimate at list prices)"
    )


def cmd_quit(state: ChatState, arg: str) -> None:
    state.running = False


COMMANDS: dict[str, tuple[Handler, str]] = {
    "help": (cmd_help, "this list"),
    "new": (cmd_new, "start a new session"),
    "sessions": (cmd_sessions, "list recent sessions (/sessions N)"),
    "load": (cmd_load, "switch to a session: /load ID"),
    "system": (cmd_system, "show, set (/system TEXT) or remove (/system -); saved"),
    "model": (cmd_model, "show or set the model, saved: /model deepseek-v4-pro"),
    "effort": (cmd_effort, "reasoning effort, saved: /effort low|high|max (or default)"),
    "temperature": (cmd_temperature, "show or set, saved: /temperature 0.7 (or default)"),
    "think": (cmd_think, "thinking mode on or off: /think [on|off]"),
    "retry": (cmd_retry, "ask the last question again (replaces the answer)"),
    "undo": (cmd_undo, "remove the last question and its answer"),
    "export": (cmd_export, "write the session to FILE (.json, or .md for a transcript)"),
    "usage": (cmd_usage, "tokens and estimated cost of this session"),
    "quit": (cmd_quit, "leave (or Ctrl-D)"),
}


def handle_slash(state: ChatState, line: str) -> None:
    """Run a slash command; its errors are shown, never fatal."""
    name, _, arg = line[1:].partition(" ")
    entry = COMMANDS.get(name.lower()) or (COMMANDS["quit"] if name == "exit" else None)
    if entry is None:
        state.say(f"Unknown command /{name}: try /help", style="yellow")
        return
    try:
        entry[0](state, arg.strip())
    except SessionConflictError:
        state.reloaded()
    except (DSKitError, OSError) as exc:
        state.error(exc)
