"""The REPL's slash commands, driven through stdin without a terminal (plain output)."""

from __future__ import annotations

import json


def test_plain_chat_from_stdin(cli, home, on_sim):
    result = cli("chat", *on_sim, input="first\nsecond\n")
    assert result.exit_code == 0, result.stderr
    [record] = home.sessions()
    assert [m.role for m in record.messages] == ["user", "assistant"] * 2
    for answer in record.messages[1::2]:
        assert answer.content in result.stdout
    assert f"Bye. Session saved: {record.id[:12]}" in result.stdout


def test_opening_and_quitting_leaves_no_empty_session(cli, home, on_sim):
    assert cli("chat", *on_sim, input="/help\n/quit\n").exit_code == 0
    assert home.sessions() == []


def test_help_lists_every_command(cli, on_sim):
    out = cli("chat", *on_sim, input="/help\n").stdout
    for name in ("new", "sessions", "load", "system", "model", "temperature", "retry", "undo",
                 "export", "usage", "help", "think"):  # fmt: skip
        assert f"/{name}" in out
    assert "Unknown command /nope" in cli("chat", *on_sim, input="/nope\n").stdout


def test_model_temperature_and_system(cli, home, on_sim):
    script = "/model deepseek-v4-pro\n/temperature 0.2\n/temperature 9\n/system be terse\nhi\n"
    result = cli("chat", *on_sim, input=script)
    assert "Model: deepseek-v4-pro" in result.stdout
    assert "Temperature: 0.2" in result.stdout
    assert "temperature must be between 0 and 2" in result.stdout
    [record] = home.sessions()
    assert record.system == "be terse"
    assert record.messages[1].message.get("reasoning_content")  # thinking is on by default


def test_new_sessions_load_and_continue_by_prefix(cli, home, on_sim):
    cli("chat", *on_sim, input="about rivers\n/new\nabout mountains\n")
    older, newer = sorted(home.sessions(), key=lambda r: r.created)
    listed = cli("chat", *on_sim, input="/sessions\n").stdout
    assert older.id[:12] in listed and newer.id[:12] in listed
    result = cli("chat", *on_sim, input=f"/load {older.id[:8]}\nmore rivers\n")
    assert f"Loaded session {older.id[:12]}: about rivers" in result.stdout
    again = cli("chat", *on_sim, "--session", older.id[:8], input="")
    assert f"Continuing session {older.id[:12]} (4 messages)" in again.stdout
    record = next(r for r in home.sessions() if r.id == older.id)
    assert [m.content for m in record.messages[::2]] == ["about rivers", "more rivers"]


def test_undo_retry_and_usage(cli, home, on_sim):
    result = cli("chat", *on_sim, input="one\ntwo\n/undo\n/retry\n/usage\n")
    assert "Removed the last turn (2 messages): two" in result.stdout
    assert "Retrying: one" in result.stdout
    [record] = home.sessions()
    assert [m.content for m in record.messages[::2]] == ["one"]
    usage = next(line for line in result.stdout.splitlines() if line.startswith("Session "))
    assert "tokens in" in usage and "estimate" in usage


def test_export_json_and_markdown(cli, home, on_sim, tmp_path):
    out_json, out_md = tmp_path / "s.json", tmp_path / "s.md"
    cli("chat", *on_sim, input=f"hello\n/export {out_json}\n/export {out_md}\n")
    exported = json.loads(out_json.read_text())
    assert exported["format"] == "dskit-session"
    assert exported["session"]["messages"][0]["message"]["content"] == "hello"
    assert out_md.read_text().startswith("# hello\n")


def test_continue_without_sessions_starts_fresh(cli, on_sim):
    result = cli("chat", *on_sim, "--continue", input="")
    assert result.exit_code == 0 and "No session to continue yet" in result.stdout


def test_session_and_continue_together_is_a_usage_error(cli):
    assert cli("chat", "--session", "x", "--continue").exit_code == 2


def test_api_errors_are_shown_and_the_repl_goes_on(cli, home, on_sim):
    result = cli("chat", *on_sim, "--header", "X-Sim-Status:401", input="hi\n/sessions\n")
    assert result.exit_code == 0
    assert "Error: 401" in result.stdout and "sk-test-0123456789abcdef" not in result.stdout


def test_think_switches_thinking_mode(cli, home, on_sim):
    shown = cli("chat", *on_sim, "-m", "deepseek-v4-pro", input="why?\n")
    [record] = home.sessions()
    thinking = record.messages[1].message["reasoning_content"]
    assert thinking and thinking in shown.stderr  # plain output: thinking on stderr
    off = cli("chat", *on_sim, input="/think off\nwhy not?\n")
    assert "Thinking mode off" in off.stdout and off.stderr == ""
    latest = home.sessions()[0]
    assert latest.params == {"thinking": False}
    assert not latest.messages[1].message.get("reasoning_content")  # none was made
    flagged = cli("chat", *on_sim, "--no-think", input="and?\n")
    assert flagged.stderr == ""
