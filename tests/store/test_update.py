"""`update`: the versioned header write, checked the same way on every store."""

from __future__ import annotations

import pytest

from dskit import ValidationError
from dskit.store import (
    SessionConflictError,
    SessionNotFoundError,
    SessionRecord,
    SessionStore,
)
from tests.store.test_protocol import user


def made(store: SessionStore) -> SessionRecord:
    record = SessionRecord(model="deepseek-flash", system="be brief", params={"temperature": 0.5})
    return store.create(record)


def test_update_changes_only_the_named_fields_and_bumps_the_version(store: SessionStore) -> None:
    record = made(store)
    v1 = store.append(record.id, [user("hello there")], expected_version=0)
    v2 = store.update(record.id, model="deepseek-v4-pro", expected_version=v1)
    assert v2 == v1 + 1
    loaded = store.load(record.id)
    assert loaded.model == "deepseek-v4-pro"
    assert loaded.system == "be brief" and loaded.params == {"temperature": 0.5}
    assert loaded.title == "hello there" and [m.content for m in loaded.messages] == ["hello there"]
    assert loaded.version == v2


def test_update_all_fields_and_clear_the_system_prompt(store: SessionStore) -> None:
    record = made(store)
    v = store.update(
        record.id, system="", params={"top_p": 0.9, "stop": ["x"]}, title="Renamed",
        expected_version=0,
    )  # fmt: skip
    loaded = store.load(record.id)
    assert loaded.system is None
    assert loaded.params == {"top_p": 0.9, "stop": ["x"]}
    assert loaded.title == "Renamed" and loaded.model == "deepseek-flash"
    store.update(record.id, system="new prompt 你好", expected_version=v)
    assert store.load(record.id).system == "new prompt 你好"


def test_a_set_title_survives_later_appends(store: SessionStore) -> None:
    record = made(store)
    v = store.update(record.id, title="My title", expected_version=0)
    store.append(record.id, [user("first question")], expected_version=v)
    assert store.load(record.id).title == "My title"
    assert [i.title for i in store.list_sessions() if i.id == record.id] == ["My title"]


def test_stale_update_is_a_conflict_and_writes_nothing(store: SessionStore) -> None:
    record = made(store)
    store.append(record.id, [user("from A")], expected_version=0)
    with pytest.raises(SessionConflictError) as info:
        store.update(record.id, model="deepseek-v4-pro", system="x", expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    loaded = store.load(record.id)
    assert (loaded.model, loaded.system, loaded.version) == ("deepseek-flash", "be brief", 1)


def test_update_of_a_missing_session(store: SessionStore) -> None:
    with pytest.raises(SessionNotFoundError):
        store.update("nope", model="m", expected_version=0)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": ""}, "model"),
        ({"model": 3}, "model"),
        ({"system": 5}, "system"),
        ({"params": ["temperature"]}, "params"),
        ({"params": {"temperature": object()}}, "params"),
        ({"title": b"bytes"}, "title"),
    ],
)
def test_bad_update_is_refused_before_anything_is_written(
    store: SessionStore, fields: dict[str, object], param: str
) -> None:
    record = made(store)
    with pytest.raises(ValidationError) as info:
        store.update(record.id, expected_version=0, **fields)  # type: ignore[arg-type]
    assert info.value.param == param
    loaded = store.load(record.id)
    assert loaded.version == 0 and loaded.model == "deepseek-flash"


def test_export_and_import_carry_the_updated_header(store: SessionStore) -> None:
    record = made(store)
    v = store.append(record.id, [user("q")], expected_version=0)
    store.update(
        record.id, model="deepseek-v4-pro", system="", params={"temperature": 1.3},
        title="T", expected_version=v,
    )  # fmt: skip
    data = store.export_session(record.id)
    session = data["session"]
    assert (session["model"], session["system"], session["params"], session["title"]) == (
        "deepseek-v4-pro", None, {"temperature": 1.3}, "T",
    )  # fmt: skip
    copy = store.import_session(data, new_id=True)
    loaded = store.load(copy.id)
    assert (loaded.model, loaded.system, loaded.params, loaded.title) == (
        "deepseek-v4-pro", None, {"temperature": 1.3}, "T",
    )  # fmt: skip


async def test_aupdate_behaves_like_update(store: SessionStore) -> None:
    record = await store.acreate(SessionRecord(system="s"))
    v = await store.aupdate(record.id, model="deepseek-v4-pro", system="", expected_version=0)
    with pytest.raises(SessionConflictError):
        await store.aupdate(record.id, params={"temperature": 0}, expected_version=0)
    v = await store.aupdate(record.id, params={"temperature": 0}, expected_version=v)
    loaded = await store.aload(record.id)
    assert (loaded.model, loaded.system, loaded.params, loaded.version) == (
        "deepseek-v4-pro", None, {"temperature": 0}, v,
    )  # fmt: skip
    await store.aclose()
