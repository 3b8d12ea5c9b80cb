"""The SessionStore contract, checked the same way on every store."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from dskit import ValidationError
from dskit.store import (
    SessionConflictError,
    SessionFormatError,
    SessionNotFoundError,
    SessionRecord,
    SessionStore,
    StoredMessage,
    StoreError,
)


def user(text: str) -> StoredMessage:
    return StoredMessage({"role": "user", "content": text})


def assistant(text: str, **meta: object) -> StoredMessage:
    return StoredMessage({"role": "assistant", "content": text}, **meta)  # type: ignore[arg-type]


def new(store: SessionStore, **fields: object) -> SessionRecord:
    return store.create(SessionRecord(**fields))  # type: ignore[arg-type]


def test_store_is_a_session_store(store: SessionStore) -> None:
    assert isinstance(store, SessionStore)
    assert "key" not in repr(store).lower()


def test_create_and_load_round_trip_keeps_metadata(store: SessionStore) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    record = SessionRecord(
        model="deepseek-v4-pro",
        system="be brief",
        params={"temperature": 0.5},
        messages=[
            user("héllo 你好"),
            assistant("partial", incomplete=True, usage=usage, tokens=7),
            StoredMessage({"role": "system", "content": "sum"}, summary=True, covers=2),
        ],
    )
    store.create(record)
    loaded = store.load(record.id)
    assert loaded.model == "deepseek-v4-pro"
    assert loaded.system == "be brief"
    assert loaded.params == {"temperature": 0.5}
    assert loaded.version == 0
    assert loaded.title == "héllo 你好"
    assert [m.to_dict() for m in loaded.messages] == [m.to_dict() for m in record.messages]
    assert loaded.messages[1].incomplete and loaded.messages[1].usage == usage
    assert loaded.messages[2].summary and loaded.messages[2].covers == 2


def test_system_none_survives(store: SessionStore) -> None:
    record = new(store)
    assert store.load(record.id).system is None


def test_append_bumps_version_and_sets_title_once(store: SessionStore) -> None:
    record = new(store)
    v1 = store.append(record.id, [user("first question\nmore")], expected_version=0)
    v2 = store.append(record.id, [assistant("a"), user("second")], expected_version=v1)
    assert (v1, v2) == (1, 2)
    loaded = store.load(record.id)
    assert loaded.version == 2
    assert loaded.title == "first question"
    assert [m.content for m in loaded.messages] == ["first question\nmore", "a", "second"]
    assert loaded.updated >= loaded.created


def test_long_title_is_cut(store: SessionStore) -> None:
    record = new(store)
    store.append(record.id, [user("x" * 300)], expected_version=0)
    title = store.load(record.id).title
    assert len(title) == 80 and title.endswith("…")


def test_stale_writer_gets_conflict_and_writes_nothing(store: SessionStore) -> None:
    record = new(store)
    store.append(record.id, [user("from A")], expected_version=0)
    with pytest.raises(SessionConflictError) as info:
        store.append(record.id, [user("from B")], expected_version=0)
    assert info.value.expected == 0 and info.value.actual == 1
    assert "reload" in str(info.value)
    loaded = store.load(record.id)
    assert [m.content for m in loaded.messages] == ["from A"]
    store.append(record.id, [user("from B")], expected_version=loaded.version)
    assert [m.content for m in store.load(record.id).messages] == ["from A", "from B"]


def test_replace_and_truncate(store: SessionStore) -> None:
    record = new(store)
    v = store.append(record.id, [user("q"), assistant("par", incomplete=True)], expected_version=0)
    v = store.replace(record.id, 1, assistant("partial done"), expected_version=v)
    loaded = store.load(record.id)
    assert loaded.messages[1].content == "partial done"
    assert not loaded.messages[1].incomplete
    v = store.truncate(record.id, 1, expected_version=v)
    assert [m.content for m in store.load(record.id).messages] == ["q"]
    v = store.truncate(record.id, 0, expected_version=v)
    assert store.load(record.id).messages == []
    assert store.load(record.id).version == v == 4


def test_replace_out_of_range_is_a_clear_error(store: SessionStore) -> None:
    record = new(store)
    store.append(record.id, [user("q")], expected_version=0)
    with pytest.raises(StoreError, match="no message at index 5"):
        store.replace(record.id, 5, user("x"), expected_version=1)
    assert store.load(record.id).version == 1


def test_missing_session(store: SessionStore) -> None:
    with pytest.raises(SessionNotFoundError, match="nope"):
        store.load("nope")
    with pytest.raises(SessionNotFoundError):
        store.append("nope", [user("x")], expected_version=0)
    assert store.delete("nope") is False


def test_create_twice_is_a_conflict(store: SessionStore) -> None:
    record = new(store)
    with pytest.raises(SessionConflictError):
        store.create(SessionRecord(id=record.id))


def test_list_newest_first_with_limit(store: SessionStore) -> None:
    ids = [new(store).id for _ in range(3)]
    store.append(ids[0], [user("touch")], expected_version=0)
    listed = store.list_sessions()
    assert [i.id for i in listed][:1] == [ids[0]]
    assert {i.id for i in listed} == set(ids)
    assert len(store.list_sessions(limit=2)) == 2
    info = next(i for i in listed if i.id == ids[0])
    assert info.message_count == 1 and info.version == 1 and info.title == "touch"
    with pytest.raises(ValidationError):
        store.list_sessions(limit=0)


def test_list_only_the_given_ids_newest_first(store: SessionStore) -> None:
    ids = [new(store).id for _ in range(4)]
    store.append(ids[1], [user("touch")], expected_version=0)
    chosen = {ids[0], ids[1], ids[3], "no-such-session"}
    assert [i.id for i in store.list_sessions(ids=chosen)] == [ids[1], ids[3], ids[0]]
    assert [i.id for i in store.list_sessions(2, ids=chosen)] == [ids[1], ids[3]]
    assert store.list_sessions(ids=set()) == []


def test_search_by_text(store: SessionStore) -> None:
    a, b = new(store), new(store)
    messages = [user("Weather in Paris?"), assistant("Sunny, 100% dry")]
    store.append(a.id, messages, expected_version=0)
    store.append(b.id, [user("tell me a joke")], expected_version=0)
    assert [i.id for i in store.search("paris")] == [a.id]
    assert [i.id for i in store.search("100%")] == [a.id]
    assert store.search("0%_d") == []  # LIKE wildcards are taken literally
    assert {i.id for i in store.search("e")} == {a.id, b.id}
    assert store.search("zzz") == []


def test_delete(store: SessionStore) -> None:
    record = new(store)
    store.append(record.id, [user("bye")], expected_version=0)
    assert store.delete(record.id) is True
    with pytest.raises(SessionNotFoundError):
        store.load(record.id)
    assert record.id not in {i.id for i in store.list_sessions()}


def test_export_import_round_trip(store: SessionStore) -> None:
    record = new(store, system="sys")
    store.append(record.id, [user("q"), assistant("a", incomplete=True)], expected_version=0)
    exported = store.export_session(record.id)
    assert exported["format"] == "dskit-session" and exported["format_version"] == 1
    text = orjson.dumps(exported)
    store.delete(record.id)
    imported = store.import_session(orjson.loads(text))
    assert imported.id == record.id
    assert [m.to_dict() for m in imported.messages] == [
        m.to_dict() for m in store.load(record.id).messages
    ]
    copy = store.import_session(exported, new_id=True)
    assert copy.id != record.id and copy.system == "sys" and copy.messages[1].incomplete
    with pytest.raises(SessionConflictError):
        store.import_session(exported)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"format": "other"}, "not a dskit session"),
        ({"format": "dskit-session", "format_version": 99}, "unsupported"),
        ({"format": "dskit-session", "format_version": 1, "session": []}, "object"),
        (
            {
                "format": "dskit-session",
                "format_version": 1,
                "session": {"id": "x", "messages": [1]},
            },
            "message",
        ),
        (
            {
                "format": "dskit-session",
                "format_version": 1,
                "session": {"id": "x", "messages": [{"message": {"role": "robot"}}]},
            },
            "role",
        ),
        ("not json object", "object"),
    ],
)
def test_import_rejects_bad_data_clearly(store: SessionStore, data: object, match: str) -> None:
    with pytest.raises(SessionFormatError, match=match):
        store.import_session(data)


async def test_async_twins_behave_like_sync(store: SessionStore) -> None:
    record = await store.acreate(SessionRecord(system="s"))
    v = await store.aappend(record.id, [user("async hello")], expected_version=0)
    v = await store.aappend(record.id, [assistant("x", incomplete=True)], expected_version=v)
    with pytest.raises(SessionConflictError):
        await store.aappend(record.id, [user("stale")], expected_version=0)
    v = await store.areplace(record.id, 1, assistant("done"), expected_version=v)
    loaded = await store.aload(record.id)
    assert [m.content for m in loaded.messages] == ["async hello", "done"]
    assert loaded.version == v == 3 and loaded.title == "async hello"
    assert [i.id for i in await store.asearch("ASYNC")] == [record.id]
    assert record.id in {i.id for i in await store.alist_sessions()}
    assert [i.id for i in await store.alist_sessions(5, ids=[record.id, "gone"])] == [record.id]
    v = await store.atruncate(record.id, 1, expected_version=v)
    assert len((await store.aload(record.id)).messages) == 1
    assert await store.adelete(record.id) is True
    with pytest.raises(SessionNotFoundError):
        await store.aload(record.id)
    await store.aclose()


def test_what_a_caller_holds_is_its_own_copy(store: SessionStore) -> None:
    """Changing a record or message after a call never changes what the store keeps."""
    params = {"max_tokens": 50, "stop": ["x"]}
    created = store.create(SessionRecord(params=params))
    params["stop"].append("y")
    created.params["stop"].append("z")
    message = assistant("a", usage={"total_tokens": 3})
    v = store.append(created.id, [message], expected_version=0)
    message.message["content"] = "changed"
    assert message.usage is not None
    message.usage["total_tokens"] = 99
    replacement = StoredMessage({"role": "assistant", "content": "b", "tool_calls": [{"id": "1"}]})
    store.replace(created.id, 0, replacement, expected_version=v)
    replacement.message["tool_calls"][0]["id"] = "2"
    loaded = store.load(created.id)
    loaded.messages[0].message["content"] = "mutated"
    again = store.load(created.id)
    assert again.params == {"max_tokens": 50, "stop": ["x"]}
    assert again.messages[0].message == {"role": "assistant", "content": "b",
                                         "tool_calls": [{"id": "1"}]}  # fmt: skip


async def test_the_memory_store_never_leaves_the_loop() -> None:
    """Its calls never block, so its async twins run on the loop: a thread hop would cost
    more than the call (and hand the GIL back and forth under load)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from dskit.store import MemoryStore

    class NoThreads(ThreadPoolExecutor):
        def submit(self, *args: object, **kwargs: object) -> Any:
            raise AssertionError("a worker thread was used")

    asyncio.get_running_loop().set_default_executor(NoThreads())
    store = MemoryStore()
    record = await store.acreate(SessionRecord())
    v = await store.aappend(record.id, [user("hi")], expected_version=0)
    v = await store.areplace(record.id, 0, user("hello"), expected_version=v)
    v = await store.aupdate(record.id, title="t", expected_version=v)
    assert [m.content for m in (await store.aload(record.id)).messages] == ["hello"]
    assert [i.id for i in await store.alist_sessions()] == [record.id]
    assert await store.adelete(record.id)
