"""`dskit config`: where the settings file is, what is in effect (secrets hidden), and
setting or clearing a value without opening an editor."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Any

import click

from dskit.cli._common import fail
from dskit.client._errors import ConfigError
from dskit.config import (
    ENV_VARS,
    Settings,
    check_effort,
    config_path,
    load_settings,
    parse_temperature,
    read_file,
    sources,
)
from dskit.config import write_file as write_settings

KEYS = tuple(f.name for f in fields(Settings))


@click.group("config")
def config() -> None:
    """Settings: flags override env vars, which override the TOML file.

    \b
    The file is config.toml in the user config dir (DSKIT_CONFIG overrides the path).
    A file holding an api_key must be private (chmod 600) or it is refused.
    Env vars: DEEPSEEK_API_KEY, DEEPSEEK_BASE_URL, DSKIT_MODEL, DSKIT_SYSTEM,
    DSKIT_TEMPERATURE, DSKIT_STORE.

    \b
    Examples:
      dskit config show
      dskit config set model deepseek-v4-pro
      dskit config set temperature 0.3
      dskit config unset system
      dskit config path
    """


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(as_json: bool) -> None:
    """Show the settings in effect and where each comes from (secrets are masked).

    \b
    Examples:
      dskit config show
      DSKIT_MODEL=deepseek-v4-pro dskit config show --json
    """
    try:
        shown, origin = load_settings().public(), sources()
    except ConfigError as exc:
        raise fail(exc) from None
    defaults = {k: v for k, v in defaults_in_effect().items() if k not in shown}
    if as_json:
        data = {"file": str(config_path()), "settings": shown, "defaults": defaults}
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"# file: {config_path()}")
    for key, value in shown.items():
        click.echo(f"{key} = {json.dumps(value)}    # from {origin.get(key, '?')}")
    for key, value in defaults.items():
        if value is None:
            click.echo(f"# {key} not set: {UNSET_MEANS[key]}")
        else:
            click.echo(f"{key} = {json.dumps(value)}    # default")


UNSET_MEANS = {
    "api_key": "the built-in offline simulator answers",
    "system": "no system prompt",
    "temperature": "the API's default",
}


def defaults_in_effect() -> dict[str, Any]:
    """What each unset setting means right now (`None`: the API's own default)."""
    from dskit._models import DEFAULT_EFFORT, DEFAULT_MODEL
    from dskit.store import default_store_path

    return {
        "api_key": None,  # none: the built-in offline simulator
        "base_url": "https://api.deepseek.com",
        "model": DEFAULT_MODEL,
        "system": None,
        "temperature": None,
        "store": str(default_store_path()),
        "think": True,
        "effort": DEFAULT_EFFORT,
    }


@config.command("path")
def path_cmd() -> None:
    """Print the settings file's path (it may not exist yet).

    \b
    Example:
      ${EDITOR:-vi} "$(dskit config path)"
    """
    click.echo(str(config_path()))


def _parse(key: str, value: str) -> object:
    if key == "temperature":
        try:
            return parse_temperature(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="VALUE") from None
    if key == "effort":
        try:
            return check_effort(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="VALUE") from None
    if key == "think":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise click.BadParameter("expected true or false", param_hint="VALUE")
        return value.lower() in ("true", "1", "yes", "on")
    return value


@config.command("set")
@click.argument("key", type=click.Choice(KEYS))
@click.argument("value")
def set_cmd(key: str, value: str) -> None:
    """Store a setting in the file (written private to you, mode 600).

    \b
    Examples:
      dskit config set model deepseek-v4-pro
      dskit config set store redis://localhost:6379/0
    """
    parsed = _parse(key, value)
    _write({key: parsed})
    shown = Settings(**{key: parsed}).public()[key]  # type: ignore[arg-type]
    click.echo(f"{key} = {json.dumps(shown)} written to {config_path()}", err=True)
    if key in ENV_VARS and ENV_VARS[key] in os.environ:
        click.echo(f"note: {ENV_VARS[key]} is set and overrides the file", err=True)


@config.command("unset")
@click.argument("key", type=click.Choice(KEYS))
def unset_cmd(key: str) -> None:
    """Remove a setting from the file.

    \b
    Example:
      dskit config unset api_key
    """
    _write({key: None}, clear=True)
    click.echo(f"{key} removed from {config_path()}", err=True)


def _write(changes: dict[str, object], *, clear: bool = False) -> None:
    try:
        current = asdict(read_file())
    except ConfigError as exc:
        raise fail(exc) from None
    current.update(changes)
    if not clear:
        current = {k: v for k, v in current.items() if v is not None}
    write_settings(Settings(**current))
