"""A process killed mid-answer loses at most the last moment: the partial answer is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from dskit import ChatSession, DeepSeek, SQLiteStore
from dskit.store import SessionNotFoundError, StoredMessage
from tests.conftest import wait_until

CHILD = """
import sys
from dskit import ChatSession, DeepSeek, SQLiteStore

path, url, session_id = sys.argv[1:4]
client = DeepSeek(api_key="sk-crash-test-0000000", base_url=url)
session = ChatSession(
    client, system="You tell stories.", store=SQLiteStore(path), session_id=session_id,
    save_interval=0.2,
)
session.send("tell me a long story", extra_headers={"X-Sim-Token-Ms": "100"})
print("finished", flush=True)
"""


def partial_answer(path: Path, session_id: str) -> StoredMessage | None:
    store = SQLiteStore(path)
    try:
        messages = store.load(session_id).messages
    except SessionNotFoundError:
        return None
    finally:
        store.close()
    if len(messages) == 2 and messages[1].incomplete and len(messages[1].content) > 10:
        return messages[1]
    return None


def test_sigkill_mid_stream_keeps_the_partial_answer_marked_incomplete(
    sim: Any, client: DeepSeek, tmp_path: Path
) -> None:
    path, session_id = tmp_path / "crash.sqlite3", "crash-session"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), sim.base_url, session_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        wait_until(lambda: partial_answer(path, session_id), timeout=30)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        out, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, err.decode()
    assert b"finished" not in out

    reloaded = ChatSession.load(client, session_id, store=SQLiteStore(path))
    partial = reloaded.history[1]
    assert reloaded.history[0].content == "tell me a long story"
    assert partial.role == "assistant" and partial.incomplete and partial.content

    full = reloaded.retry()  # the simulator answers the same question the same way
    assert full.content.startswith(partial.content)
    assert len(partial.content) < len(full.content)
    assert not reloaded.history[1].incomplete
