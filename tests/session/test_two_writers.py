"""Two processes on one session, recovering from conflicts the documented way: no
question stored twice, no orphan partial answer, every acknowledged send in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dskit.store import SessionRecord, SQLiteStore

SENDS = 12
WRITER = r"""
import json, sys
from dskit import ChatSession, DeepSeek
from dskit.store import SessionConflictError, SQLiteStore

path, base_url, session_id, name, sends = sys.argv[1:6]
store = SQLiteStore(path)
client = DeepSeek(api_key="sk-test", base_url=base_url, default_headers={"X-Sim-Token-Ms": "2"})
session = ChatSession.load(client, session_id, store=store, save_interval=0.01)
report = {"acked": [], "stored_unanswered": [], "attempts": 0}
for n in range(int(sends)):
    text = f"{name}-{n}"
    for _ in range(50):  # the documented loop (docs/sessions.md)
        report["attempts"] += 1
        try:
            session.send(text, thinking=False)
            report["acked"].append(text)
            break
        except SessionConflictError as conflict:
            if conflict.question_stored:  # in the store: never send it again
                report["stored_unanswered"].append(text)
                break
            # nothing was written and the session is reloaded: send it again
print(json.dumps(report))
"""


def _run_writers(path: Path, sim: Any, session_id: str) -> list[dict[str, Any]]:
    env = {**os.environ}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), sim.base_url, session_id, name, str(SENDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("a", "b")
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    return reports


def test_two_processes_never_duplicate_a_question_or_leave_a_partial(
    sim: Any, tmp_path: Path
) -> None:
    path = tmp_path / "shared.sqlite3"
    store = SQLiteStore(path)
    record = store.create(SessionRecord(model="deepseek-flash"))
    reports = _run_writers(path, sim, record.id)
    final = store.load(record.id)
    store.close()
    questions = [m.content for m in final.messages if m.role == "user"]
    assert len(questions) == len(set(questions)), "a question was stored twice"
    acked = [t for r in reports for t in r["acked"]]
    unanswered = [t for r in reports for t in r["stored_unanswered"]]
    assert sorted(questions) == sorted(acked + unanswered)  # nothing lost, nothing extra
    assert len(acked) + len(unanswered) == 2 * SENDS
    assert not [m for m in final.messages if m.incomplete], "an orphan partial answer"
    for index, message in enumerate(final.messages):  # each acknowledged answer follows
        if message.role == "user" and message.content in acked:
            answers = [m for m in final.messages[index + 1 :] if m.role == "assistant"]
            assert answers, message.content
    conflicts = sum(r["attempts"] for r in reports) - 2 * SENDS
    print(f"conflicts recovered: {conflicts}, stored unanswered: {len(unanswered)}")
