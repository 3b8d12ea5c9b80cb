"""Terminal safety: escape sequences from a model, a server or the store are shown, never
obeyed, on every path the CLI prints them (a TTY or a pipe)."""

from __future__ import annotations

import io
import json

import pytest

from dskit.cli._render import PlainView, RichView, dumps_line
from dskit.cli._safe import visible
from dskit.client._types import ChatResult, ContentDelta, ReasoningDelta, Retrying
from dskit.store import SessionRecord, SQLiteStore, StoredMessage
from tests.cli.test_render import rich_console

# each: what an attacker writes, and what must not reach the terminal raw
SEQUENCES = {
    "window title (OSC 0)": "\x1b]0;pwned\x07",
    "clear screen (CSI 2J)": "\x1b[2J\x1b[H",
    "disguised link (OSC 8)": "\x1b]8;;https://evil.example/\x1b\\https://docs.python.org\x1b]8;;\x1b\\",
    "carriage return + erase line": "safe text\r\x1b[2Kfake prompt $ ",
    "8-bit CSI (C1)": "\x9b2J",
    "bidi override": "invoice_\u202egnp.exe",
}
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e")


def _clean(text: str) -> bool:
    return not any(ch in text for ch in RAW)


@pytest.mark.parametrize("name", SEQUENCES)
def test_visible_shows_each_sequence_like_cat_v(name: str) -> None:
    shown = visible(SEQUENCES[name])
    assert _clean(shown)
    assert "^[" in shown or "M-^[" in shown or "^M" in shown or "<U+202E>" in shown
    assert visible("tabs\tand\nnewlines stay") == "tabs\tand\nnewlines stay"


@pytest.mark.parametrize("name", SEQUENCES)
def test_plain_and_rich_views_print_answers_safely(name: str) -> None:
    attack = SEQUENCES[name]
    out, err = io.StringIO(), io.StringIO()
    plain = PlainView(think=True, out=out)
    plain.handle(ContentDelta(attack))
    plain.handle(Retrying(attempt=1, delay=0.0, reason=attack))
    assert _clean(out.getvalue())
    console, raw = rich_console(width=200)
    with RichView(console, model="deepseek-flash") as view:
        view.handle(ReasoningDelta(attack))
        view.handle(ContentDelta(attack))
        view.finish(ChatResult(content=attack, reasoning_content=attack))
    printed = raw.getvalue()
    assert "pwned\x07" not in printed and "\x1b]8;;https://evil" not in printed
    assert "\x9b" not in printed and "\u202e" not in printed and "\x1b[2J" not in printed
    del err


@pytest.mark.parametrize("name", SEQUENCES)
def test_json_output_stays_the_same_value_and_is_terminal_safe(name: str) -> None:
    line = dumps_line({"content": SEQUENCES[name]})
    assert _clean(line)
    assert json.loads(line) == {"content": SEQUENCES[name]}  # nothing lost


@pytest.fixture
def hostile(home) -> SessionRecord:
    """A session an attacker wrote through the gateway, as an operator finds it."""
    attack = "".join(SEQUENCES.values())
    store = SQLiteStore(home.store)
    try:
        record = store.create(SessionRecord(title="title " + attack, model="deepseek-flash"))
        messages = [
            StoredMessage({"role": "user", "content": "q " + attack}),
            StoredMessage({"role": "assistant", "content": "a " + attack}),
        ]
        store.append(record.id, messages, expected_version=record.version)
        return store.load(record.id)
    finally:
        store.close()


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "list"],
        ["sessions", "list", "--json"],
        ["sessions", "show", "{id}"],
        ["sessions", "show", "{id}", "--json"],
        ["sessions", "export", "{id}"],
        ["sessions", "export", "{id}", "--markdown"],
    ],
)
def test_sessions_commands_print_stored_text_safely(cli, hostile, args) -> None:
    result = cli(*[a.format(id=hostile.id) for a in args])
    assert result.exit_code == 0, result.stderr
    assert _clean(result.stdout) and _clean(result.stderr)
    assert "title" in result.stdout or "q " in result.stdout


def test_an_export_to_a_file_keeps_the_exact_text(cli, hostile, tmp_path) -> None:
    target = tmp_path / "out.json"
    assert cli("sessions", "export", hostile.id, "-o", str(target)).exit_code == 0
    data = json.loads(target.read_text())
    assert data["session"]["messages"][1]["message"]["content"] == hostile.messages[1].content
