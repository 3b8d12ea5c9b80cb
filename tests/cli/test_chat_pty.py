"""The REPL driven in a real terminal (a pty) against the built-in simulator.

One conversation goes through everything a user does: a streamed answer, Ctrl-C in the
middle of the next one (the partial answer is kept, marked incomplete), /retry, /undo,
Ctrl-D, then `dskit chat --continue` picking the conversation up in a new process.
"""

from __future__ import annotations

import os
import shutil
import sys
import termios
from pathlib import Path

import pytest

from dskit._tokens import count_text
from dskit.store import SessionRecord, SQLiteStore
from tests.cli._pty import Terminal, squash
from tests.conftest import wait_until

PROMPT = "you ›"
FOOTER = r"tokens \d+ in( \(\d+ cached\))? / \d+ out(, \d+ thinking)? · ~\S+ \(estimate\)"
ESTIMATED_FOOTER = r"tokens ~(\d+) out \(estimated: the usage did not arrive\)"


@pytest.fixture
def env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSEEK_", "NO_COLOR"))}
    env.update(
        DSKIT_HOME=str(home.root), DSKIT_CONFIG=str(home.config), TERM="xterm-256color",
        PROMPT_TOOLKIT_NO_CPR="1", COLUMNS="120", LINES="40",
    )  # fmt: skip
    return env


def latest(home) -> SessionRecord | None:
    return next(iter(home.sessions()), None)


def answer_growing(home, question: str) -> bool:
    record = latest(home)
    if record is None:
        return False
    messages = record.messages
    return (
        len(messages) >= 2 and messages[-2].content == question
        and messages[-1].role == "assistant" and bool(messages[-1].content)
    )  # fmt: skip


# The first request (only) stalls after a few events, so Ctrl-C lands mid-answer every time.
STALL_ONCE = [
    "--header", "X-Sim-Stall-After-Events:6", "--header", "X-Sim-Stall-Ms:30000",
    "--header", "X-Sim-Fault-Key:stall", "--header", "X-Sim-Fault-Times:1",
]  # fmt: skip


def test_stream_interrupt_retry_undo_quit_then_continue(home, env):
    with Terminal(["chat", "--no-think", "--sim-token-ms", "20", *STALL_ONCE], env) as term:
        term.expect("No DEEPSEEK_API_KEY set: using the built-in offline simulator")
        term.expect(PROMPT)
        term.send("tell me a story\r")
        wait_until(lambda: answer_growing(home, "tell me a story"), timeout=15)
        # keys are not echoed while an answer streams (a `^C` would garble the live area)
        assert not termios.tcgetattr(term.fd)[3] & termios.ECHO
        term.send("\x03")  # Ctrl-C in the middle of the answer
        term.expect(r"\[interrupted: the answer stopped here; the partial answer is kept\]")
        estimated = int(term.expect(ESTIMATED_FOOTER).group(1))  # from the stream's snapshot
        term.expect(PROMPT)
        [_, partial] = latest(home).messages
        assert partial.incomplete and partial.content
        assert estimated == count_text(partial.content)
        assert squash(partial.content) in squash(term.text)

        term.send("/retry\r")
        term.expect("Retrying: tell me a story")
        term.expect(FOOTER)
        term.expect(PROMPT)
        [question, first] = latest(home).messages
        assert question.content == "tell me a story" and not first.incomplete
        # the simulator is deterministic: the full answer continues what was cut off
        assert first.content.startswith(partial.content) and first.content != partial.content
        assert squash(first.content) in squash(term.text)

        term.send("hello there\r")
        term.expect(FOOTER)
        term.expect(PROMPT)
        assert len(latest(home).messages) == 4
        term.send("/undo\r")
        term.expect(r"Removed the last turn \(2 messages\): hello there")
        term.expect(PROMPT)
        assert [m.content for m in latest(home).messages] == ["tell me a story", first.content]

        term.send("/model deepseek-v4-pro\r")
        term.expect(r"Model: deepseek-v4-pro \(saved with session")
        term.expect(PROMPT)
        term.send("/think on\r")
        term.expect(r"Thinking mode on \(saved with session")
        term.expect(PROMPT)
        term.send("\x04")  # Ctrl-D quits
        term.expect("Bye. Session saved")
        assert term.wait() == 0
    session_id = latest(home).id
    assert "hello there" in (home.root / "chat_history").read_text()

    with Terminal(["chat", "--continue", "--sim-token-ms", "0"], env) as term:
        term.expect(f"Continuing session {session_id[:12]} \\(2 messages\\): tell me a story")
        term.expect("Settings: model deepseek-v4-pro, thinking on")  # survived the restart
        term.expect("dskit chat · deepseek-v4-pro")
        term.expect(PROMPT)
        assert squash(first.content[-200:]) in squash(term.text)  # the previous answer
        term.send("and then?\x1b\rsecond line\r")  # Esc Enter: a new line, not a send
        term.expect(FOOTER)
        term.expect(PROMPT)
        term.send("\x04")
        assert term.wait() == 0
    record = latest(home)
    assert record.id == session_id
    expected = ["tell me a story", first.content, "and then?\nsecond line"]
    assert [m.content for m in record.messages[:3]] == expected
    assert record.messages[3].role == "assistant" and not record.messages[3].incomplete
    assert record.model == "deepseek-v4-pro" and record.messages[3].message["reasoning_content"]


def test_ask_in_a_terminal_renders_and_ctrl_c_exits_130(home, env):
    with Terminal(["ask", "--sim-token-ms", "0", "quick one"], env) as term:
        term.expect(FOOTER)  # a terminal gets the rich view, footer included
        assert term.wait() == 0
    slow = ["ask", "--no-think", "--sim-token-ms", "20", *STALL_ONCE, "a slow one"]
    with Terminal(slow, env) as term:
        wait_until(lambda: answer_growing(home, "a slow one"), timeout=15)
        term.send("\x03")
        term.expect(r"\[interrupted")
        assert term.wait() == 130
    answer = latest(home).messages[-1]
    assert answer.incomplete and answer.content


def test_a_session_changed_by_another_writer_is_reloaded(home, env):
    from dskit.store import StoredMessage

    with Terminal(["chat", "--sim-token-ms", "0"], env) as term:
        term.expect(PROMPT)
        term.send("never sent")
        term.expect("never sent")
        term.send("\x03")  # Ctrl-C at the prompt drops the line, the REPL goes on
        term.expect(PROMPT)
        term.send("from terminal one\r")
        term.expect(FOOTER)
        term.expect(PROMPT)
        record = latest(home)
        store = SQLiteStore(home.store)  # another writer adds a turn behind the REPL's back
        try:
            other = [StoredMessage({"role": "user", "content": "from elsewhere"}),
                     StoredMessage({"role": "assistant", "content": "noted"})]  # fmt: skip
            store.append(record.id, other, expected_version=record.version)
        finally:
            store.close()
        term.send("from terminal one again\r")
        term.expect(r"changed elsewhere .* reloaded with 4 messages")
        term.expect(PROMPT)
        term.send("from terminal one again\r")
        term.expect(FOOTER)
        term.expect(PROMPT)
        term.send("\x04")
        assert term.wait() == 0
    contents = [m.content for m in latest(home).messages[::2]]
    assert contents == ["from terminal one", "from elsewhere", "from terminal one again"]


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        (["X-Sim-Queue-Ms:600"], r"queueing: the server is busy, waiting for capacity"),
        (
            ["X-Sim-Status:503", "X-Sim-Retry-After:1", "X-Sim-Fault-Key:k", "X-Sim-Fault-Times:1"],
            r"retrying in 1s \(503: Server Overloaded",
        ),
    ],
)
def test_spinner_says_queueing_and_retrying(home, env, faults, status):
    headers = [arg for fault in faults for arg in ("--header", fault)]
    with Terminal(["ask", "--sim-token-ms", "0", *headers, "status please"], env) as term:
        term.expect(status)
        term.expect(FOOTER)  # and then the answer came
        assert term.wait() == 0


def test_the_quick_start_command_handles_ctrl_c_like_dskit_itself(home, env):
    """`python3 dev.py chat` becomes `dskit chat` (exec): Ctrl-C stops the answer, not
    dev.py, and Ctrl-D exits 0 with no traceback."""
    root = Path(__file__).resolve().parents[2]
    python3 = shutil.which("python3") or sys.executable
    command = [python3, str(root / "dev.py"), "chat"]
    args = ["--no-think", "--sim-token-ms", "20", *STALL_ONCE]
    with Terminal(args, env, program=command, cwd=str(root)) as term:
        term.expect(PROMPT)
        term.send("tell me a story\r")
        wait_until(lambda: answer_growing(home, "tell me a story"), timeout=15)
        term.send("\x03")
        term.expect(r"\[interrupted: the answer stopped here; the partial answer is kept\]")
        term.expect(PROMPT)
        term.send("\x04")
        term.expect("Bye. Session saved")
        assert term.wait() == 0
        assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text
