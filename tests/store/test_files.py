"""SQLite stores on disk: private files, one clear error for a damaged or impossible file,
and nothing more written into a damaged one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dskit._net import is_loopback
from dskit.store import SessionRecord, SQLiteStore, StoredMessage, StoreError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_a_new_store_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "sessions.sqlite3"
    old = os.umask(0o022)  # what most systems use: 0644 files, 0755 directories
    try:
        store = SQLiteStore(path)
        store.create(SessionRecord(model="deepseek-flash"))
        store.close()
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
    for extra in path.parent.glob("sessions.sqlite3-*"):  # WAL and shared memory
        assert _mode(extra) & 0o077 == 0, extra


def _damaged_store(tmp_path: Path) -> Path:
    path = tmp_path / "sessions.sqlite3"
    store = SQLiteStore(path)
    for n in range(40):
        record = store.create(SessionRecord(model="deepseek-flash", title=f"t{n}"))
        filler = [StoredMessage({"role": "user", "content": "x" * 3000})]
        store.append(record.id, filler, expected_version=record.version)
    store.close()
    for extra in path.parent.glob("sessions.sqlite3-*"):
        extra.unlink()
    with path.open("r+b") as handle:  # garbage over pages in the middle of the file
        handle.seek(4096 * 3)
        handle.write(os.urandom(4096 * 6))
    return path


def test_a_damaged_file_is_one_store_error_and_is_not_written_again(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path)
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="damaged") as caught:
        for info in store.list_sessions(100):
            store.load(info.id)
    assert "move it aside" in str(caught.value)
    size = path.stat().st_size
    with pytest.raises(StoreError, match="damaged"):
        store.create(SessionRecord(model="deepseek-flash"))
    store.close()
    assert path.stat().st_size == size


def test_a_directory_is_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        SQLiteStore(tmp_path)


def test_cli_on_a_damaged_store_prints_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dskit.cli import main

    path = _damaged_store(tmp_path)
    result = CliRunner().invoke(main, ["sessions", "list", "--store", str(path), "-n", "100"])
    shown = CliRunner().invoke(main, ["sessions", "show", "t3", "--store", str(path)])
    for run in (result, shown):
        if run.exit_code == 0:
            continue  # the damage is not on the pages this command read
        assert run.exit_code == 1 and "Traceback" not in run.output
        assert run.stderr.strip().startswith("Error:") and len(run.stderr.splitlines()) == 1
    assert (result.exit_code, shown.exit_code) != (0, 0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
        ("localhost", True), ("LOCALHOST.", True), ("0.0.0.0", False), ("10.0.0.1", False),
        ("127.evil.example", False), ("localhost.evil.example", False), ("", False),
        ("::ffff:8.8.8.8", False),
    ],
)  # fmt: skip
def test_loopback_is_an_address_check_not_a_prefix(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_unreachable_redis_is_one_store_error_without_the_password() -> None:
    import asyncio

    from dskit.store import RedisStore, StoreUnavailableError
    from tests.conftest import free_port

    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    store = RedisStore(url)
    for call in (store.list_sessions, lambda: store.load("x")):
        with pytest.raises(StoreUnavailableError, match="cannot reach the session store") as e:
            call()
        assert "hunter2" not in str(e.value) and "***" in str(e.value)
    with pytest.raises(StoreUnavailableError):
        asyncio.run(store.alist_sessions())
    store.close()


@pytest.mark.parametrize(
    ("command", "stored"),
    [
        (["sessions", "list"], True),
        (["ask", "--sim-token-ms", "0", "hi"], True),
        (["ask", "--sim-token-ms", "0", "--no-save", "hi"], False),  # never asks the store
    ],
)
def test_cli_with_redis_down_prints_one_line(
    command: list[str], stored: bool, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from dskit.cli import main
    from tests.conftest import free_port

    env = {"DSKIT_HOME": str(tmp_path), "DSKIT_CONFIG": str(tmp_path / "c.toml")}
    store = ["--store", f"redis://127.0.0.1:{free_port()}/0"]
    result = CliRunner().invoke(main, [*command, *store], env=env)
    if not stored:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "cannot reach the session store" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the simulator notice, the error
