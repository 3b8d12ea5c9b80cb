"""What a turn does when another writer changes the session under it (deterministic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dskit import ChatSession, DeepSeek
from dskit.store import SessionConflictError, SQLiteStore


@pytest.fixture
def two(sim: Any, tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    client = DeepSeek(api_key="sk-test", base_url=sim.base_url)
    first = ChatSession(client, store=store, params={"thinking": False}, save_interval=0.001)
    first.send("hello")
    second = ChatSession.load(client, first.id, store=store)
    yield first, second
    client.close()
    store.close()


def test_a_header_change_elsewhere_does_not_stop_a_growing_answer(two: Any) -> None:
    first, second = two
    with first.stream("tell me more") as stream:
        events = iter(stream)
        next(e for e in events if e.type == "content")  # the partial answer is saved
        second.reload()
        second.configure(system="be brief")  # the version moves on; the answer's place stays
        result = stream.final()
    stored = first.history[-1]
    assert stored.content == result.content and not stored.incomplete
    assert [m.role for m in first.history] == ["user", "assistant"] * 2
    assert first.system == "be brief"  # the fresh session was taken in


def test_a_turn_elsewhere_before_the_first_save_reports_the_question_stored(two: Any) -> None:
    first, second = two
    stream = first.stream("mine")  # the question is stored now
    second.reload()
    second.send("theirs", thinking=False)  # another writer goes on from it
    with pytest.raises(SessionConflictError) as caught, stream:
        stream.final()
    conflict = caught.value
    assert conflict.question_stored is True and conflict.record is not None
    contents = [m.content for m in conflict.record.messages]
    assert contents.count("mine") == 1 and "theirs" in contents
    assert not [m for m in conflict.record.messages if m.incomplete]  # no orphan partial
    assert first.version == conflict.record.version  # the session is reloaded already


def test_a_question_that_conflicts_is_not_stored_and_says_so(two: Any) -> None:
    first, second = two
    second.send("theirs", thinking=False)
    with pytest.raises(SessionConflictError) as caught:
        first.send("mine")
    assert caught.value.question_stored is False
    assert "mine" not in [m.content for m in caught.value.record.messages]
    first.send("mine", thinking=False)  # the documented recovery: send it again
    assert [m.content for m in first.history if m.role == "user"] == ["hello", "theirs", "mine"]
