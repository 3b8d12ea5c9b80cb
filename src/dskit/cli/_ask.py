"""`dskit ask`: one question, one answer, made for terminals and for scripts alike."""

from __future__ import annotations

import errno
import sys
from typing import TYPE_CHECKING, Any

import click

from dskit._models import DEFAULT_MODEL
from dskit.cli._common import (
    EXIT_CODES_HELP,
    EXIT_INCOMPLETE,
    EXIT_OK,
    Backend,
    api_options,
    error_text,
    exit_code_for,
    fail,
    invocation,
    open_backend,
    session_params,
    store_option,
)
from dskit.cli._last import remember
from dskit.cli._render import (
    INTERRUPTED,
    JsonLinesView,
    PlainView,
    RichView,
    View,
    dumps_line,
    make_console,
    result_dict,
)
from dskit.cli._turn import CUT_REASONS, Outcome, run_turn
from dskit.client._errors import DSKitError, IncompleteStreamError, redact
from dskit.config import Settings
from dskit.store import open_store

if TYPE_CHECKING:
    from dskit.session import ChatSession

EXIT_INTERRUPTED = 130
ASK_HELP = f"""Ask one question and print the answer.

Piped stdin is added to the question as context. In a terminal the answer is rendered
as Markdown with a footer (tokens, cost estimate); piped or redirected, it is plain
text. Each question is saved as a session (see `dskit sessions`) unless --no-save.

\b
Examples:
  dskit ask "What is a KV cache?"
  cat notes.md | dskit ask "summarise in 3 bullets"
  git diff | dskit ask -m deepseek-v4-pro --effort max "review this change" > review.md
  dskit ask --no-think "translate to French: good morning"
  dskit ask --json "2+2?" | jq -r .content
  dskit ask --jsonl "tell me a story" | jq -c 'select(.type=="content")'

{EXIT_CODES_HELP}
  130 interrupted with Ctrl-C (the partial answer is saved)
"""


def question_from(words: tuple[str, ...]) -> str:
    """The question, with piped stdin appended as context (usage error when empty)."""
    question = " ".join(words).strip()
    context = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    if context.strip():
        question = f"{question}\n\n{context.rstrip()}" if question else context.rstrip()
    if not question.strip():
        raise click.UsageError("nothing to ask: give a question or pipe text on stdin")
    return question


@click.command("ask", help=ASK_HELP)
@click.argument("question", nargs=-1)
@click.option("-s", "--system", help="System prompt.")
@api_options
@click.option("--json", "as_json", is_flag=True, help="Print the final result as one JSON object.")
@click.option("--jsonl", is_flag=True, help="Print every stream event as a JSON line.")
@click.option("--no-save", is_flag=True, help="Do not store this exchange as a session.")
@store_option
def ask(
    question: tuple[str, ...], as_json: bool, jsonl: bool, no_save: bool, **shared: Any
) -> None:
    if as_json and jsonl:
        raise click.UsageError("--json and --jsonl cannot be used together")
    text = question_from(question)
    run = invocation(shared)
    try:
        with open_backend(run.settings, run.backend) as backend:
            session = _session(backend, run.settings, no_save)
            request = {} if run.max_tokens is None else {"max_tokens": run.max_tokens}
            try:
                code = _answer(session, run.settings, text, _mode(as_json, jsonl), request)
            finally:
                if not no_save:  # `chat --continue` goes on from this question
                    remember(run.settings.store, session.id)
    except DSKitError as exc:
        if as_json:  # a script reading stdout gets JSON either way
            message = redact(error_text(exc, run.settings), run.settings.api_key)
            error = {"type": type(exc).__name__, "message": message}
            click.echo(dumps_line({"error": error, "exit_code": exit_code_for(exc)}))
        raise fail(exc, run.settings) from None
    except OSError as exc:  # stdout on a full disk; a closed pipe is click's to handle
        if exc.errno == errno.EPIPE:
            raise
        raise fail(exc, run.settings) from None
    raise click.exceptions.Exit(code)


def _mode(as_json: bool, jsonl: bool) -> str:
    if as_json:
        return "json"
    if jsonl:
        return "jsonl"
    return "rich" if sys.stdout.isatty() else "plain"


def _view(mode: str, settings: Settings) -> View:
    think = settings.think if settings.think is not None else mode == "rich"
    if mode == "jsonl":
        return JsonLinesView()
    if mode == "rich":
        return RichView(make_console(), model=settings.model or DEFAULT_MODEL, think=think)
    return PlainView(think=think)


def _session(backend: Backend, settings: Settings, no_save: bool) -> ChatSession:
    """A new session with the settings saved in it (the max_tokens cap is per request, as
    in `dskit chat`, so a later `dskit chat --continue` is not capped)."""
    from dskit.session import ChatSession

    store = None if no_save else open_store(settings.store)
    return ChatSession(
        backend.client, system=settings.system, model=settings.model or DEFAULT_MODEL,
        store=store, params=session_params(settings),
    )  # fmt: skip


def _answer(
    session: ChatSession, settings: Settings, text: str, mode: str, request: dict[str, Any]
) -> int:
    try:
        if mode == "json":
            return _answer_json(session, text, request)
        outcome = run_turn(lambda: session.stream(text, **request), _view(mode, settings))
        return _code(outcome)
    finally:
        session.store.close()


def _answer_json(session: ChatSession, text: str, request: dict[str, Any]) -> int:
    try:
        result = session.send(text, **request)
    except IncompleteStreamError as exc:
        data = {**result_dict(exc.partial), "incomplete": True, "error": exc.cause}
        click.echo(dumps_line(data))
        return exit_code_for(exc)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        return EXIT_INTERRUPTED
    outcome = Outcome(result, cut=CUT_REASONS.get(result.finish_reason or ""))
    click.echo(dumps_line({**result_dict(result), "incomplete": not outcome.complete}))
    return _code(outcome)


def _code(outcome: Outcome) -> int:
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome.complete else EXIT_INCOMPLETE
