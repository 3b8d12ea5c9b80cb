"""User configuration for the terminal: flags override env vars, which override a TOML file.

The file lives in the user config dir (`~/.config/dskit/config.toml` on Linux); the
`DSKIT_CONFIG` env var points elsewhere (tests use it so nothing touches the real home).
Every key is optional:

    api_key = "sk-..."          # refused unless the file is readable by its owner only
    base_url = "https://api.deepseek.com"
    model = "deepseek-flash"    # or deepseek-v4-pro
    system = "You are terse."
    temperature = 0.7
    store = "redis://localhost:6379/0"   # or a SQLite path; default: the user data dir
    think = true                # thinking mode (DeepSeek's default: on)
    effort = "high"             # reasoning effort in thinking mode: low, high or max

A key in a file that others can read is a leak waiting to happen, so it is refused with a
`ConfigError` that says how to fix it (`chmod 600`), never used quietly.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from dskit._validate import EFFORT_ALIASES
from dskit.client._errors import ConfigError

# setting -> env var that overrides the file
ENV_VARS: dict[str, str] = {
    "api_key": "DEEPSEEK_API_KEY",
    "base_url": "DEEPSEEK_BASE_URL",
    "model": "DSKIT_MODEL",
    "system": "DSKIT_SYSTEM",
    "temperature": "DSKIT_TEMPERATURE",
    "store": "DSKIT_STORE",
    "effort": "DSKIT_EFFORT",
}
SECRETS = frozenset({"api_key"})


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved configuration; None means "not set anywhere: use the default"."""

    api_key: str | None = None
    base_url: str | None = None
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    store: str | None = None
    think: bool | None = None
    effort: str | None = None

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRETS and v else v) for k, v in asdict(self).items()}
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def merged(self, overrides: Mapping[str, Any]) -> Settings:
        """These settings with every non-None value of `overrides` on top."""
        chosen = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **chosen)

    def public(self) -> dict[str, Any]:
        """A dict safe to print: secrets are masked, unset values are left out."""
        return {
            k: (mask(v) if k in SECRETS else v) for k, v in asdict(self).items() if v is not None
        }


def mask(secret: str) -> str:
    """Enough of a key to tell two apart, never enough to use one."""
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def config_path() -> Path:
    """`$DSKIT_CONFIG`, else `config.toml` in the user config dir."""
    override = os.environ.get("DSKIT_CONFIG")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return platformdirs.user_config_path("dskit") / "config.toml"


_TEXT, _NUMBER, _BOOL = ("string", (str,)), ("number", (int, float)), ("boolean", (bool,))
_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "api_key": _TEXT,
    "base_url": _TEXT,
    "model": _TEXT,
    "system": _TEXT,
    "temperature": _NUMBER,
    "store": _TEXT,
    "think": _BOOL,
    "effort": _TEXT,
}


def check_temperature(value: float, name: str = "temperature") -> float:
    """The API's range, checked wherever a temperature is set, so a bad one in the file or
    the environment is refused up front rather than by every later request."""
    if not 0 <= value <= 2:
        raise ConfigError(f"{name} must be between 0 and 2, got {value:g}")
    return value


def check_effort(value: str, name: str = "effort") -> str:
    """An effort level the API knows (aliases included), checked where it is set."""
    if value not in EFFORT_ALIASES:
        levels = ", ".join(sorted(EFFORT_ALIASES))
        raise ConfigError(f"{name} must be one of {levels}, got {value!r}")
    return value


def parse_temperature(text: str, name: str = "temperature") -> float:
    """A temperature typed as text (an env var, a slash command), parsed and checked."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    return check_temperature(value, name)


def _check_value(path: Path, key: str, value: Any) -> Any:
    if key not in _TYPES:
        known = ", ".join(f.name for f in fields(Settings))
        raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
    label, kinds = _TYPES[key]
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise ConfigError(f"{path}: {key} must be a {label}, got {value!r}")
    checked: Any = value  # isinstance against a tuple of types narrows it to object
    if key == "temperature":
        return check_temperature(float(checked), f"{path}: temperature")
    if key == "effort":
        return check_effort(str(checked), f"{path}: effort")
    return checked


def _check_private(path: Path) -> None:
    """Refuse a key in a file that group or others may read."""
    mode = path.stat().st_mode
    if os.name != "nt" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} holds an api_key but is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}` or set DEEPSEEK_API_KEY instead"
        )


def read_file(path: Path | None = None) -> Settings:
    """Settings from the TOML file (empty when the file does not exist)."""
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    values = {key: _check_value(path, key, value) for key, value in data.items()}
    if values.get("api_key"):
        _check_private(path)
    return Settings(**values)


def read_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from env vars (empty strings count as unset)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, var in ENV_VARS.items():
        if environ.get(var):
            values[key] = environ[var]
    if "temperature" in values:
        values["temperature"] = parse_temperature(values["temperature"], "DSKIT_TEMPERATURE")
    if "effort" in values:
        values["effort"] = check_effort(values["effort"], "DSKIT_EFFORT")
    return Settings(**values)


def load_settings(flags: Mapping[str, Any] | None = None) -> Settings:
    """Flags over env vars over the file."""
    return read_file().merged(asdict(read_env())).merged(flags or {})


def sources() -> dict[str, str]:
    """Where each set value came from ("env DSKIT_MODEL" or "file"), for `config show`."""
    found: dict[str, str] = {}
    for key, value in asdict(read_file()).items():
        if value is not None:
            found[key] = "file"
    for key, value in asdict(read_env()).items():
        if value is not None:
            found[key] = f"env {ENV_VARS[key]}"
    return found


def write_file(settings: Settings, path: Path | None = None) -> Path:
    """Write settings as TOML, private to the owner (0600) from the first byte."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {_toml_value(v)}" for k, v in asdict(settings).items() if v is not None]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    import json

    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
