"""`dskit sessions` over real stores: SQLite files (default and --store) and Redis."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def two_sessions(cli, home, on_sim):
    cli("ask", *on_sim, "first question about rivers")
    cli("ask", *on_sim, "second question about mountains")
    infos = home.sessions()
    assert [i.title for i in infos] == [
        "second question about mountains",
        "first question about rivers",
    ]
    return infos


def test_list_newest_first_with_search_and_json(cli, two_sessions):
    lines = cli("sessions", "list").stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(two_sessions[0].id[:12]) and lines[0].endswith("mountains")
    found = cli("sessions", "list", "--search", "RIVERS").stdout.splitlines()
    assert len(found) == 1 and "rivers" in found[0]
    data = json.loads(cli("sessions", "list", "--json", "-n", "1").stdout)
    assert [d["id"] for d in data] == [two_sessions[0].id] and data[0]["message_count"] == 2


def test_list_empty_says_how_to_start(cli):
    result = cli("sessions", "list")
    assert result.exit_code == 0 and result.stdout == "" and "dskit chat" in result.stderr


def test_show_by_unique_prefix(cli, two_sessions):
    target = two_sessions[1]
    result = cli("sessions", "show", target.id[:6])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# first question about rivers")
    assert "## user" in result.stdout and "## assistant" in result.stdout
    as_json = json.loads(cli("sessions", "show", target.id, "--json").stdout)
    assert as_json["format"] == "dskit-session" and as_json["session"]["id"] == target.id


def test_unknown_and_ambiguous_ids_are_clear_errors(cli, two_sessions):
    missing = cli("sessions", "show", "zzzz")
    assert missing.exit_code == 1 and "no session with id 'zzzz'" in missing.stderr
    ambiguous = cli("sessions", "show", "")
    assert ambiguous.exit_code == 2 and "ambiguous" in ambiguous.stderr


def test_export_import_round_trip_and_conflict(cli, home, two_sessions, tmp_path):
    target = two_sessions[0]
    out = tmp_path / "chat.json"
    assert cli("sessions", "export", target.id, "-o", str(out)).exit_code == 0
    exported = json.loads(out.read_text())
    assert exported["session"]["messages"][0]["message"]["content"] == target.title
    clash = cli("sessions", "import", str(out))
    assert clash.exit_code == 1 and "--new-id" in clash.stderr
    copy = cli("sessions", "import", "-", "--new-id", input=out.read_text())
    assert copy.exit_code == 0, copy.stderr
    new_id = copy.stdout.strip()
    assert new_id != target.id
    again = json.loads(cli("sessions", "show", new_id, "--json").stdout)["session"]
    assert again["messages"] == exported["session"]["messages"]


def test_import_refuses_garbage(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli("sessions", "import", str(bad)).exit_code == 2
    bad.write_text('{"format": "something-else"}')
    result = cli("sessions", "import", str(bad))
    assert result.exit_code == 1 and "not a dskit session export" in result.stderr


def test_export_markdown(cli, two_sessions):
    text = cli("sessions", "export", two_sessions[0].id, "--markdown").stdout
    assert text.startswith("# second question about mountains\n")


def test_delete_asks_then_deletes(cli, two_sessions):
    target = two_sessions[0]
    kept = cli("sessions", "delete", target.id, input="n\n")
    assert kept.exit_code == 0 and "Kept it." in kept.stderr  # "no" is an answer, not an error
    assert len(cli("sessions", "list").stdout.splitlines()) == 2
    gone = cli("sessions", "delete", target.id[:8], "--yes")
    assert gone.exit_code == 0 and "Deleted session" in gone.stderr
    lines = cli("sessions", "list").stdout.splitlines()
    assert len(lines) == 1 and two_sessions[1].id[:12] in lines[0]


def test_store_option_picks_another_sqlite_file(cli, on_sim, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere" / "s.sqlite3"
    assert cli("ask", *on_sim, "--store", str(other), "kept apart").exit_code == 0
    assert cli("sessions", "list").stdout == ""
    assert "kept apart" in cli("sessions", "list", "--store", str(other)).stdout
    monkeypatch.chdir(tmp_path)
    foreign = cli("sessions", "list", "--store", "postgres://db/sessions")
    assert foreign.exit_code == 2 and "unknown store URL" in foreign.stderr
    assert not (tmp_path / "postgres:").exists()  # was a SQLite file at ./postgres:/db/...


@pytest.mark.redis
def test_redis_store(cli, on_sim, redis_url, redis_prefix, monkeypatch):
    from dskit.store import RedisStore

    assert cli("ask", *on_sim, "--store", redis_url, f"hello redis {redis_prefix}").exit_code == 0
    listed = cli("sessions", "list", "--store", redis_url, "--search", redis_prefix)
    assert listed.exit_code == 0 and f"hello redis {redis_prefix}" in listed.stdout
    store = RedisStore(redis_url)
    try:
        [info] = store.search(redis_prefix)
        assert store.load(info.id).messages[1].role == "assistant"
        assert cli("sessions", "delete", info.id, "--yes", "--store", redis_url).exit_code == 0
        assert store.search(redis_prefix) == []
    finally:
        store.close()


def test_every_command_has_help_with_examples(cli):
    for args in (
        ["sessions"], ["sessions", "list"], ["sessions", "show"], ["sessions", "delete"],
        ["sessions", "export"], ["sessions", "import"], ["config"], ["config", "show"],
        ["config", "set"], ["config", "unset"], ["config", "path"], ["chat"], ["ask"],
    ):  # fmt: skip
        result = cli(*args, "--help")
        assert result.exit_code == 0
        assert "Example" in result.stdout, args


def test_show_marks_an_incomplete_answer(cli, on_sim):
    args = ["--header", "X-Sim-End-After-Events:4", "--header", "X-Sim-Retry-After:0"]
    assert cli("ask", *on_sim, *args, "cut me off").exit_code == 6
    [info] = json.loads(cli("sessions", "list", "--json").stdout)
    text = cli("sessions", "show", info["id"]).stdout
    assert "## assistant (incomplete: interrupted or cut off)" in text
