"""`dskit chat`: the REPL. Input with prompt_toolkit, answers with rich, sessions saved.

The session is created on the first message, so opening and closing the REPL leaves no
empty sessions behind. Its model, system prompt and temperature are saved with it
(`/model`, `/system`, `/temperature` change them for good), so `--continue` picks up
where it stood. Ctrl-C during an answer stops it (the session keeps what arrived, marked
incomplete); Ctrl-C at the prompt clears the line; Ctrl-D quits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from dskit._models import DEFAULT_MODEL, migrate
from dskit._validate import is_number
from dskit.cli._common import (
    Backend,
    api_options,
    fail,
    invocation,
    open_backend,
    session_params,
    store_option,
)
from dskit.cli._render import PlainView, RichView, View, make_console
from dskit.cli._safe import visible
from dskit.cli._turn import run_turn
from dskit.client._errors import DSKitError, redact
from dskit.config import Settings
from dskit.store import open_store
from dskit.store._model import SessionConflictError

if TYPE_CHECKING:
    from rich.console import Console

    from dskit.session import ChatSession, SessionStream
    from dskit.store import SessionStore

PROMPT = "you › "
HISTORY_FILE = "chat_history"
RECAP_CHARS = 600


# what a new session (`/new`) takes over from the one left
CARRIED = ("temperature", "thinking", "effort")


@dataclass(slots=True)
class ChatState:
    """Everything the REPL and its slash commands share."""

    backend: Backend
    store: SessionStore
    settings: Settings
    console: Console
    think: bool
    session: ChatSession | None = None
    # the settings of the next new session; a current session keeps its own, in the store
    model: str | None = None
    # request params of the next new session (temperature, thinking, effort)
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    max_tokens: int | None = None  # this run's cap, sent with each request
    running: bool = True

    @property
    def current_model(self) -> str:
        if self.session is not None:
            return self.session.model
        return self.model or self.settings.model or DEFAULT_MODEL

    @property
    def current_temperature(self) -> float | None:
        if self.session is not None:
            value = self.session.params.get("temperature")
            return float(value) if is_number(value) else None
        value = self.params.get("temperature")
        return float(value) if is_number(value) else None

    def set_param(self, name: str, value: Any) -> None:
        """A setting of the next new session (None: back to the default)."""
        if value is None:
            self.params.pop(name, None)
        else:
            self.params[name] = value

    @property
    def current_effort(self) -> str | None:
        params = self.session.params if self.session is not None else self.params
        effort = params.get("effort")
        return effort if isinstance(effort, str) else None

    @property
    def current_thinking(self) -> bool:
        """Whether answers come in thinking mode (the API's default: on)."""
        if self.session is not None:
            return self.session.thinking
        chosen = self.params.get("thinking")
        return chosen if isinstance(chosen, bool) else migrate(self.current_model)[1] is not False

    @property
    def current_system(self) -> str | None:
        return self.session.system if self.session is not None else self.system

    def request_params(self) -> dict[str, Any]:
        """What this run adds to each request (the rest is saved with the session)."""
        return {} if self.max_tokens is None else {"max_tokens": self.max_tokens}

    def ensure_session(self) -> ChatSession:
        """The current session, created in the store on first use."""
        if self.session is None:
            from dskit.session import ChatSession

            self.session = ChatSession(
                self.backend.client, system=self.system, model=self.current_model,
                store=self.store, params=self.params,
            )  # fmt: skip
        return self.session

    def load(self, session_id: str) -> ChatSession:
        from dskit.session import ChatSession

        self.session = ChatSession.load(self.backend.client, session_id, store=self.store)
        return self.session

    def new_session(self) -> None:
        """Leave the current session; the next one starts with its settings."""
        if self.session is not None:
            self.model = self.session.model
            self.system = self.session.system
            self.params = {k: v for k, v in self.session.params.items() if k in CARRIED}
        self.session = None

    def view(self) -> View:
        if self.console.is_terminal:
            return RichView(self.console, model=self.current_model, think=self.think)
        return PlainView(think=self.think)

    def say(self, text: str, style: str = "dim") -> None:
        self.console.print(visible(text), style=style, markup=False, highlight=False)

    def error(self, exc: BaseException) -> None:
        self.say(f"Error: {redact(str(exc), self.settings.api_key)}", style="bold red")

    def stream_turn(self, start: Callable[[], SessionStream]) -> None:
        """One answer, shown as it streams; errors are reported and the REPL goes on."""
        try:
            run_turn(start, self.view())
        except SessionConflictError as conflict:
            if conflict.question_stored:
                self.reloaded("Your question is saved; /retry answers it again.")
            else:
                self.reloaded("Nothing was saved: send your message again.")
        except DSKitError as exc:
            self.error(exc)

    def reloaded(self, then: str = "Try again.") -> None:
        """Another terminal wrote to the session: take its changes in, and say so."""
        assert self.session is not None
        self.session.reload()
        self.say(
            "This session was changed elsewhere (another terminal?); it is reloaded "
            f"with {len(self.session.history)} messages. {then}",
            style="yellow",
        )


CHAT_HELP = """Chat in the terminal, with streamed Markdown answers and saved sessions.

Enter sends; Esc then Enter (or Alt-Enter) adds a new line. Ctrl-C stops an answer and
keeps what arrived; Ctrl-D quits. Type /help inside for the slash commands:
/new /sessions /load /system /model /temperature /think /retry /undo /export /usage.
The model, system prompt and temperature are saved with each session; with --continue
or --session, -m, -t and -s change the continued session.

Without DEEPSEEK_API_KEY (and no --base-url) the chat runs on the built-in offline
simulator and says so.

\b
Examples:
  dskit chat
  dskit chat -m deepseek-v4-pro --effort max
  dskit chat --system "You are a terse Rust expert." -t 0.3
  dskit chat --continue              # pick up the most recent session
  dskit chat --session 3f2a          # a session by id (or a unique prefix)
  dskit chat --base-url http://localhost:8000 --store redis://localhost:6379/0
"""


@click.command("chat", help=CHAT_HELP)
@click.option("-s", "--system", help="System prompt (with --continue: replaces the session's).")
@api_options
@click.option("--session", "session_id", metavar="ID", help="Continue this session.")
@click.option("-c", "--continue", "cont", is_flag=True, help="Continue the latest session.")
@store_option
def chat(session_id: str | None, cont: bool, **shared: Any) -> None:
    if session_id and cont:
        raise click.UsageError("--session and --continue cannot be used together")
    flags = {name: shared.get(name) for name in ("model", "temperature", "system", "think")}
    run = invocation(shared)
    try:
        with open_backend(run.settings, run.backend) as backend:
            state = _state(backend, run.settings, run.max_tokens)
            try:
                _pick_session(state, session_id, cont)
                _apply_flags(state, flags)
                _repl(state)
            finally:
                state.store.close()
    except DSKitError as exc:
        raise fail(exc, run.settings) from None


def _state(backend: Backend, settings: Settings, max_tokens: int | None) -> ChatState:
    return ChatState(
        backend=backend, store=open_store(settings.store), settings=settings,
        console=make_console(), think=True if settings.think is None else settings.think,
        params=session_params(settings), system=settings.system, max_tokens=max_tokens,
    )  # fmt: skip


def _pick_session(state: ChatState, session_id: str | None, cont: bool) -> None:
    from dskit.cli._sessions import resolve

    if session_id:
        state.load(resolve(state.store, session_id).id)
    elif cont:
        target = _to_continue(state)
        if target is None:
            state.say("No session to continue yet: starting a new one.")
            return
        state.load(target)
    if state.session is not None:
        _recap(state)


def _to_continue(state: ChatState) -> str | None:
    """The session left last in this store, else the most recently updated one."""
    from dskit.cli._last import last_left
    from dskit.store import SessionNotFoundError

    left = last_left(state.settings.store)
    if left is not None:
        try:
            return state.store.load(left).id
        except SessionNotFoundError:  # deleted since
            pass
    latest = state.store.list_sessions(1)
    return latest[0].id if latest else None


def _apply_flags(state: ChatState, flags: dict[str, Any]) -> None:
    """`-m`, `-t`, `-s` given with --continue/--session change that session, for good
    (settings from the environment or the config file only shape new sessions)."""
    session = state.session
    if session is None or all(v is None for v in flags.values()):
        return
    chosen = {"temperature": flags["temperature"], "thinking": flags["think"]}
    params = {k: v for k, v in chosen.items() if v is not None}
    session.configure(model=flags["model"], system=flags["system"], params=params or None)
    state.say(f"Session settings changed: {_settings_line(state)}")


def _settings_line(state: ChatState) -> str:
    temperature = state.current_temperature
    shown = "default" if temperature is None else f"{temperature:g}"
    system = "set" if state.current_system else "none"
    thinking = "on" if state.current_thinking else "off"
    return (
        f"model {state.current_model}, thinking {thinking}, temperature {shown}, "
        f"system prompt {system}"
    )


def _recap(state: ChatState) -> None:
    """Where the loaded conversation stood: its last question and answer."""
    session = state.session
    assert session is not None
    history = session.history
    state.say(f"Continuing session {session.id[:12]} ({len(history)} messages): {session.title}")
    state.say(f"Settings: {_settings_line(state)}")
    for stored in history[-2:]:
        text = stored.content
        if len(text) > RECAP_CHARS:
            text = "…" + text[-RECAP_CHARS:]
        mark = " [incomplete]" if stored.incomplete else ""
        state.say(f"{stored.role}{mark}: {text}")


def _banner(state: ChatState) -> None:
    where = "the offline simulator" if state.backend.simulated else state.backend.client.base_url
    session = f"session {state.session.id[:12]}" if state.session else "new session"
    state.say(
        f"dskit chat · {state.current_model} · {where} · {session} · "
        "/help for commands, Ctrl-D to quit"
    )


def _reader(state: ChatState) -> Callable[[], str]:
    """prompt_toolkit in a terminal (history, multi-line); plain input() otherwise."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return input
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    from dskit._files import private_file
    from dskit.store import default_store_path

    history = default_store_path().parent / HISTORY_FILE  # $DSKIT_HOME, else the data dir
    private_file(history)  # what you typed is as private as the conversations
    prompt: PromptSession[str] = PromptSession(
        history=FileHistory(str(history)), key_bindings=bindings
    )
    return lambda: prompt.prompt(PROMPT)


def _repl(state: ChatState) -> None:
    from dskit.cli._slash import handle_slash

    _banner(state)
    read = _reader(state)
    while state.running:
        try:
            line = read()
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            handle_slash(state, text)
            continue
        _ask(state, line)
    if state.session is not None:
        from dskit.cli._last import remember

        remember(state.settings.store, state.session.id)
    state.say("Bye." + (f" Session saved: {state.session.id[:12]}" if state.session else ""))


def _ask(state: ChatState, text: str) -> None:
    session = state.ensure_session()
    params = state.request_params()
    state.stream_turn(lambda: session.stream(text, **params))
