"""/model, /think, /temperature and /system change the current session for good (saved in the
store), /retry streams a new answer to the same question, and --continue keeps it all."""

from __future__ import annotations

import io


def test_model_and_thinking_survive_continue(cli, home, on_sim):
    script = "hello\n/model deepseek-v4-pro\n/think on\n"
    first = cli("chat", *on_sim, "--no-think", input=script)
    assert first.exit_code == 0, first.stderr
    [record] = home.sessions()
    assert f"Model: deepseek-v4-pro (saved with session {record.id[:12]})" in first.stdout
    assert f"Thinking mode on (saved with session {record.id[:12]})" in first.stdout
    assert (record.model, record.params) == ("deepseek-v4-pro", {"thinking": True})
    assert not record.messages[1].message.get("reasoning_content")  # asked with thinking off
    again = cli("chat", *on_sim, "--continue", input="/model\nwhy?\n")
    assert "Settings: model deepseek-v4-pro, thinking on, temperature default" in again.stdout
    assert "Model: deepseek-v4-pro\n" in again.stdout
    [record] = home.sessions()
    assert [m.role for m in record.messages] == ["user", "assistant"] * 2
    assert record.messages[3].message.get("reasoning_content")  # thinking on now


def test_think_takes_on_off_or_toggles(cli, home, on_sim):
    result = cli("chat", *on_sim, input="/think\n/think\n/think maybe\n/think off\nhi\n")
    assert result.stdout.count("Thinking mode off (for the new session") == 2
    assert "Thinking mode on (for the new session" in result.stdout
    assert "Usage: /think [on|off]" in result.stdout
    [record] = home.sessions()
    assert record.params == {"thinking": False}
    assert not record.messages[1].message.get("reasoning_content")


def test_temperature_and_system_change_the_current_session(cli, home, on_sim):
    script = "hi\n/temperature 0.3\n/system be terse\nmore\n/system\n"
    result = cli("chat", *on_sim, input=script)
    [record] = home.sessions()  # /system no longer starts a new session
    assert f"Temperature: 0.3 (saved with session {record.id[:12]})" in result.stdout
    assert "System prompt set (saved with session" in result.stdout
    assert "System prompt: be terse" in result.stdout
    assert (record.params, record.system) == ({"temperature": 0.3}, "be terse")
    assert [m.content for m in record.messages[::2]] == ["hi", "more"]
    script = "/temperature\n/temperature default\n/system -\n"
    again = cli("chat", *on_sim, "--continue", input=script)
    settings = "Settings: model deepseek-flash, thinking on, temperature 0.3, system prompt set"
    assert settings in again.stdout
    assert "Temperature: 0.3\n" in again.stdout and "System prompt removed" in again.stdout
    [record] = home.sessions()
    assert (record.params, record.system) == ({}, None)


def test_settings_before_the_first_message_shape_the_new_session(cli, home, on_sim):
    script = "/model deepseek-v4-pro\n/temperature 1.5\n/think off\n/system sys\nhi\n/new\nagain\n"
    result = cli("chat", *on_sim, input=script)
    assert "Model: deepseek-v4-pro (for the new session, started with your next message)" in (
        result.stdout
    )
    records = home.sessions()
    assert len(records) == 2  # /new carries the settings over
    for record in records:
        assert (record.model, record.params, record.system) == (
            "deepseek-v4-pro", {"temperature": 1.5, "thinking": False}, "sys",
        )  # fmt: skip


def test_bad_settings_are_refused_and_nothing_changes(cli, home, on_sim):
    cli("chat", *on_sim, input="hi\n")
    [before] = home.sessions()
    result = cli("chat", *on_sim, "-c", input="/temperature 9\n/temperature warm\n/model\n")
    assert "temperature must be between 0 and 2" in result.stdout
    assert "temperature must be a number, got 'warm'" in result.stdout
    [record] = home.sessions()
    assert record.params == {} and record.version == before.version


def test_flags_with_continue_change_the_continued_session(cli, home, on_sim):
    cli("chat", *on_sim, input="hello\n")
    flags = ["-m", "deepseek-v4-pro", "-t", "0.5", "--no-think"]
    result = cli("chat", *on_sim, "-c", *flags, input="")
    changed = "Session settings changed: model deepseek-v4-pro, thinking off, temperature 0.5"
    assert changed in result.stdout
    [record] = home.sessions()
    assert record.model == "deepseek-v4-pro"
    assert record.params == {"temperature": 0.5, "thinking": False}
    # settings from the environment shape new sessions only
    env = {"DSKIT_MODEL": "deepseek-flash"}
    cli("chat", *on_sim, "-c", input="", env=env)
    assert home.sessions()[0].model == "deepseek-v4-pro"


def test_retry_keeps_the_question_and_replaces_the_answer(cli, home, on_sim):
    cli("chat", *on_sim, input="one\n")
    [before] = home.sessions()
    result = cli("chat", *on_sim, "-c", input="/retry\n")
    assert "Retrying: one" in result.stdout
    [after] = home.sessions()
    assert after.messages[0].to_dict() == before.messages[0].to_dict()  # not re-added
    assert after.messages[1].content == before.messages[1].content in result.stdout
    assert after.messages[1].created > before.messages[1].created
    assert "Nothing to retry." in cli("chat", *on_sim, input="/retry\n").stdout


def test_a_setting_after_another_writer_reloads_the_session(home, sim, tmp_path):
    from dskit import ChatSession, DeepSeek
    from dskit.cli._chat import ChatState
    from dskit.cli._common import Backend
    from dskit.cli._render import make_console
    from dskit.cli._slash import handle_slash
    from dskit.config import Settings
    from dskit.store import SQLiteStore

    out = io.StringIO()
    store = SQLiteStore(tmp_path / "s.db")
    with DeepSeek(api_key="sk-test-0123456789abcdef", base_url=sim.base_url) as client:
        state = ChatState(
            backend=Backend(client, simulated=False), store=store, settings=Settings(),
            console=make_console(out), think=False,
        )  # fmt: skip
        session = state.ensure_session()
        ChatSession.load(client, session.id, store=store).send("from the other terminal")
        handle_slash(state, "/model deepseek-v4-pro")
        said = " ".join(out.getvalue().split())
        assert "changed elsewhere" in said and "reloaded with 2 messages. Try again." in said
        assert store.load(session.id).model == "deepseek-flash"  # nothing written
        handle_slash(state, "/model deepseek-v4-pro")
    assert store.load(session.id).model == "deepseek-v4-pro"
    store.close()


def test_an_unknown_model_is_refused_and_nothing_is_saved(cli, home, on_sim):
    cli("chat", *on_sim, input="hi\n")
    [before] = home.sessions()
    result = cli("chat", *on_sim, "-c", input="/model bogus-model\n/model\n")
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert "unknown model 'bogus-model': the server offers deepseek-flash, deepseek-v4-pro" in said
    assert "Model: deepseek-flash\n" in result.stdout
    [after] = home.sessions()
    assert (after.model, after.version) == ("deepseek-flash", before.version)


def test_effort_is_shown_set_saved_and_reset(cli, home, on_sim):
    script = "/effort\n/effort max\nhi\n/effort extreme\n/effort\n/effort default\n"
    result = cli("chat", *on_sim, input=script)
    assert "Effort: default (high)\n" in result.stdout
    assert "Effort: max (for the new session" in result.stdout
    assert "effort must be one of" in result.stdout  # refused, nothing changed
    assert "Effort: max\n" in result.stdout
    [record] = home.sessions()
    assert record.params == {}  # `default` removed it again


def test_continue_opens_the_session_left_last_not_the_latest_updated(cli, home, on_sim):
    cli("chat", *on_sim, input="first\n")
    cli("chat", *on_sim, input="second\n")
    first, second = sorted(home.sessions(), key=lambda r: r.created)
    from dskit.store import SQLiteStore, StoredMessage

    store = SQLiteStore(home.store)  # another writer touches the first session
    note = [StoredMessage({"role": "user", "content": "from the gateway"})]
    store.append(first.id, note, expected_version=first.version)
    store.close()
    result = cli("chat", *on_sim, "--continue", input="")
    assert f"Continuing session {second.id[:12]}" in result.stdout
    cli("ask", *on_sim, "a quick one")  # ask counts as leaving a session too
    asked = next(r for r in home.sessions() if r.title == "a quick one")
    again = cli("chat", *on_sim, "--continue", input="")
    assert f"Continuing session {asked.id[:12]}" in again.stdout
