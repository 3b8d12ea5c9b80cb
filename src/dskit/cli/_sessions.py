"""`dskit sessions`: list, show, delete, export and import stored conversations."""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import asdict
from typing import Any

import click

from dskit.cli._common import fail, store_from, store_option
from dskit.cli._safe import json_visible, visible
from dskit.client._errors import DSKitError
from dskit.store import (
    SessionConflictError,
    SessionNotFoundError,
    SessionRecord,
    SessionStore,
    StoreError,
    export_record,
)

PREFIX_SCAN = 1000
INCOMPLETE_MARK = " (incomplete: interrupted or cut off)"


def resolve(store: SessionStore, ref: str) -> SessionRecord:
    """A session by full id or by a unique prefix of its id (as `git` does)."""
    try:
        return store.load(ref)
    except SessionNotFoundError:
        pass
    matches = [s.id for s in store.list_sessions(PREFIX_SCAN) if s.id.startswith(ref)]
    if len(matches) == 1:
        return store.load(matches[0])
    if len(matches) > 1:
        raise click.UsageError(f"session id prefix {ref!r} is ambiguous ({len(matches)} match)")
    raise SessionNotFoundError(ref)


def when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def to_markdown(record: SessionRecord) -> str:
    """A readable transcript: a heading per message, incomplete answers marked."""
    lines = [f"# {record.title or 'Untitled session'}", ""]
    lines.append(f"id `{record.id}` · model `{record.model}` · updated {when(record.updated)}")
    if record.system:
        lines += ["", "## system", "", record.system]
    for stored in record.messages:
        if stored.summary:
            continue
        label = stored.role + (INCOMPLETE_MARK if stored.incomplete else "")
        lines += ["", f"## {label}", ""]
        reasoning = stored.message.get("reasoning_content")
        if reasoning:
            lines += ["> " + line for line in str(reasoning).splitlines()] + [""]
        lines.append(stored.content)
    return "\n".join(lines) + "\n"


@click.group("sessions")
def sessions() -> None:
    """Stored conversations: list, show, delete, export, import.

    \b
    Examples:
      dskit sessions list
      dskit sessions list --search "tokenizer"
      dskit sessions show 3f2a            # an id or a unique prefix of one
      dskit sessions export 3f2a -o chat.json
      dskit sessions import chat.json --new-id
      dskit sessions delete 3f2a --yes
      dskit sessions list --store redis://localhost:6379/0
    """


@sessions.command("list")
@click.option("-n", "--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("-s", "--search", help="Only sessions whose title or messages contain TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array).")
@store_option
def list_cmd(limit: int, search: str | None, as_json: bool, store: str | None) -> None:
    """List sessions, most recently updated first.

    \b
    Examples:
      dskit sessions list -n 5
      dskit sessions list --search "rust" --json
    """
    with store_from(store) as backend:
        try:
            found = backend.search(search, limit) if search else backend.list_sessions(limit)
        except DSKitError as exc:
            raise fail(exc) from None
    if as_json:
        _echo_json([asdict(info) for info in found])
        return
    if not found:
        click.echo("No sessions yet. Start one with: dskit chat", err=True)
    for info in found:
        title = visible(info.title) or "(untitled)"
        click.echo(f"{info.id[:12]}  {when(info.updated)}  {info.message_count:>4} msgs  {title}")


@sessions.command("show")
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full export as JSON.")
@store_option
def show_cmd(session_id: str, as_json: bool, store: str | None) -> None:
    """Print one conversation (Markdown in a terminal).

    \b
    Examples:
      dskit sessions show 3f2a
      dskit sessions show 3f2a --json | jq '.session.messages | length'
    """
    with store_from(store) as backend:
        record = _load(backend, session_id)
    if as_json:
        _echo_json(export_record(record))
        return
    text = visible(to_markdown(record))
    if sys.stdout.isatty():
        from rich.markdown import Markdown

        from dskit.cli._render import make_console

        make_console().print(Markdown(text))
    else:
        click.echo(text, nl=False)


def _echo_json(data: Any) -> None:
    """JSON on stdout, readable (not ASCII-escaped) yet safe for a terminal."""
    click.echo(json_visible(json.dumps(data, ensure_ascii=False, indent=2)))


def _load(store: SessionStore, ref: str) -> SessionRecord:
    try:
        return resolve(store, ref)
    except DSKitError as exc:
        raise fail(exc) from None


@sessions.command("delete")
@click.argument("session_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@store_option
def delete_cmd(session_id: str, yes: bool, store: str | None) -> None:
    """Delete a session for good.

    \b
    Examples:
      dskit sessions delete 3f2a
      dskit sessions delete 3f2a9c0d1e2f --yes
    """
    with store_from(store) as backend:
        record = _load(backend, session_id)
        label = f"{record.id[:12]} ({visible(record.title) or 'untitled'})"
        if not yes and not click.confirm(f"Delete session {label}?", err=True):
            click.echo("Kept it.", err=True)  # an answer, not an error
            return
        backend.delete(record.id)
    click.echo(f"Deleted session {label}.", err=True)


@sessions.command("export")
@click.argument("session_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File.")
@click.option("--markdown", is_flag=True, help="A readable transcript instead of JSON.")
@store_option
def export_cmd(session_id: str, output: str | None, markdown: bool, store: str | None) -> None:
    """Export a session as versioned JSON (or Markdown) to stdout or a file.

    \b
    Examples:
      dskit sessions export 3f2a > chat.json
      dskit sessions export 3f2a --markdown -o chat.md
    """
    with store_from(store) as backend:
        record = _load(backend, session_id)
    text = to_markdown(record) if markdown else json.dumps(export_record(record), indent=2) + "\n"
    if output is None:  # a terminal or a pipe: shown safely; a file keeps the bytes
        click.echo(visible(text) if markdown else json_visible(text), nl=False)
        return
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(text)
    click.echo(f"Exported session {record.id[:12]} to {output}.", err=True)


@sessions.command("import")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@click.option("--new-id", is_flag=True, help="Import as a copy with a fresh id.")
@store_option
def import_cmd(source: Any, new_id: bool, store: str | None) -> None:
    """Import a session exported by `dskit sessions export` (a file, or - for stdin).

    \b
    Examples:
      dskit sessions import chat.json
      cat chat.json | dskit sessions import - --new-id
    """
    try:
        data = json.load(source)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="SOURCE") from None
    with store_from(store) as backend:
        try:
            record = backend.import_session(data, new_id=new_id)
        except SessionConflictError as exc:
            message = f"a session with id {exc.session_id} already exists; use --new-id for a copy"
            raise fail(StoreError(message)) from None
        except DSKitError as exc:
            raise fail(exc) from None
    click.echo(record.id)
    click.echo(f"Imported session {record.id[:12]} ({len(record.messages)} messages).", err=True)
