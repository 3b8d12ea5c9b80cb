"""Configuration: flags over env over the TOML file; secrets hidden; unsafe files refused."""

from __future__ import annotations

import json
import os

import pytest

from dskit.client._errors import ConfigError
from dskit.config import Settings, load_settings, mask, read_file, write_file

KEY = "sk-abcdef0123456789secret"


def test_file_then_env_then_flags(home, monkeypatch):
    home.config.write_text('model = "from-file"\nsystem = "file system"\ntemperature = 0.5\n')
    assert load_settings() == Settings(model="from-file", system="file system", temperature=0.5)
    monkeypatch.setenv("DSKIT_MODEL", "from-env")
    monkeypatch.setenv("DSKIT_TEMPERATURE", "1.5")
    settings = load_settings()
    assert (settings.model, settings.temperature) == ("from-env", 1.5)
    assert settings.system == "file system"
    flagged = load_settings({"model": "from-flag", "temperature": None})
    assert (flagged.model, flagged.temperature) == ("from-flag", 1.5)


def test_config_show_says_where_each_value_comes_from_and_masks_the_key(cli, home, monkeypatch):
    home.config.write_text(f'api_key = "{KEY}"\nmodel = "deepseek-v4-pro"\n')
    home.config.chmod(0o600)
    monkeypatch.setenv("DSKIT_SYSTEM", "be brief")
    result = cli("config", "show")
    assert result.exit_code == 0, result.output
    assert KEY not in result.output and "secret" not in result.output
    assert f'api_key = "{mask(KEY)}"    # from file' in result.output
    assert 'system = "be brief"    # from env DSKIT_SYSTEM' in result.output
    data = json.loads(cli("config", "show", "--json").output)
    assert data["settings"] == {
        "api_key": "****cret",
        "model": "deepseek-v4-pro",
        "system": "be brief",
    }
    assert data["file"] == str(home.config)


def test_key_in_a_file_others_can_read_is_refused(cli, home):
    home.config.write_text(f'api_key = "{KEY}"\n')
    home.config.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_file()
    result = cli("config", "show")
    assert result.exit_code == 2
    assert "readable by others" in result.stderr and KEY not in result.stderr
    asked = cli("ask", "hello")
    assert asked.exit_code == 2 and "chmod 600" in asked.stderr


def test_a_world_readable_file_without_a_key_is_fine(home):
    home.config.write_text('model = "deepseek-chat"\n')
    home.config.chmod(0o644)
    assert read_file().model == "deepseek-chat"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model = \n", "not valid TOML"),
        ('colour = "red"\n', "unknown setting 'colour'"),
        ('temperature = "hot"\n', "temperature must be a number"),
        ("think = 1\n", "think must be a boolean"),
        ("temperature = 9\n", "temperature must be between 0 and 2, got 9"),
    ],
)
def test_bad_files_get_clear_errors(cli, home, text, message):
    home.config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_file()
    result = cli("config", "show")
    assert result.exit_code == 2 and "Error:" in result.stderr and "Traceback" not in result.stderr


def test_bad_env_number_is_a_usage_error(cli, monkeypatch):
    monkeypatch.setenv("DSKIT_TEMPERATURE", "warm")
    result = cli("config", "show")
    assert result.exit_code == 2 and "DSKIT_TEMPERATURE" in result.stderr
    monkeypatch.setenv("DSKIT_TEMPERATURE", "2.5")
    asked = cli("ask", "hi")  # refused before any server is started
    assert asked.exit_code == 2 and "DSKIT_TEMPERATURE must be between 0 and 2" in asked.stderr
    assert "simulator" not in asked.stderr


def test_config_set_writes_a_private_file_and_unset_removes(cli, home):
    assert cli("config", "set", "api_key", KEY).exit_code == 0
    assert cli("config", "set", "temperature", "0.25").exit_code == 0
    assert cli("config", "set", "think", "false").exit_code == 0
    assert os.stat(home.config).st_mode & 0o777 == 0o600
    assert read_file() == Settings(api_key=KEY, temperature=0.25, think=False)
    assert cli("config", "unset", "api_key").exit_code == 0
    assert read_file() == Settings(temperature=0.25, think=False)
    bad = cli("config", "set", "temperature", "warm")
    assert bad.exit_code == 2 and "temperature must be a number" in bad.stderr
    assert cli("config", "set", "think", "maybe").exit_code == 2
    hot = cli("config", "set", "temperature", "9")
    assert hot.exit_code == 2 and "between 0 and 2" in hot.stderr
    assert read_file() == Settings(temperature=0.25, think=False)  # nothing written
    assert cli("config", "path").output.strip() == str(home.config)


def test_write_file_round_trips_awkward_strings(home):
    system = 'Say "hi"\n\tthen \\ stop — 好'
    write_file(Settings(system=system, store="/tmp/x y.sqlite3"))
    assert read_file() == Settings(system=system, store="/tmp/x y.sqlite3")


def test_repr_never_shows_the_key():
    assert KEY not in repr(Settings(api_key=KEY))
    assert mask("short") == "****"


def test_config_show_lists_the_defaults_in_effect(cli, home):
    result = cli("config", "show")
    assert 'model = "deepseek-flash"    # default' in result.output
    assert "# api_key not set: the built-in offline simulator answers" in result.output
    assert 'effort = "high"    # default' in result.output and "think = true" in result.output
    data = json.loads(cli("config", "show", "--json").output)
    assert data["settings"] == {} and data["defaults"]["model"] == "deepseek-flash"
    assert data["defaults"]["store"] == str(home.store)
