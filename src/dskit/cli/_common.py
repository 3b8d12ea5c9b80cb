"""What every command shares: settings, the backend (DeepSeek or the simulator), the
store, exit codes and error output. Heavy imports stay inside the functions."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click

from dskit._validate import EFFORT_ALIASES
from dskit.cli._safe import visible
from dskit.client._errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigError,
    DSKitError,
    IncompleteStreamError,
    InsufficientBalanceError,
    InternalServerError,
    RateLimitError,
    ValidationError,
    redact,
)
from dskit.config import Settings, load_settings
from dskit.store import open_store

if TYPE_CHECKING:
    from dskit.client._sync import DeepSeek
    from dskit.store import SessionStore

F = TypeVar("F", bound=Callable[..., Any])


def freeze_startup_heap() -> None:
    """Put what start-up allocated out of the garbage collector's reach, for a server.

    Imports, the app and its schemas are some 80,000 objects that live as long as the
    process, and every full collection walked them all: under 256 relayed streams one
    took 72 ms, a stall every open stream felt at once. Frozen (after one collection, so
    no garbage is kept), a full collection took 15 ms. Only for a long-running process:
    what is frozen is never collected.
    """
    import gc

    gc.collect()
    gc.freeze()


# exit codes of `dskit ask` (and of every command that talks to the API)
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_RATE_LIMIT = 4
EXIT_NETWORK = 5
EXIT_INCOMPLETE = 6
EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0  the answer is complete\n"
    "  1  any other error\n"
    "  2  usage error (bad option or value, bad configuration)\n"
    "  3  authentication or balance error (HTTP 401, 402)\n"
    "  4  rate limited (HTTP 429) after all retries\n"
    "  5  network failure, timeout or server error (5xx) after all retries\n"
    "  6  incomplete answer (cut off; what arrived was printed)"
)
SIM_NOTICE = (
    "No DEEPSEEK_API_KEY set: using the built-in offline simulator (answers are synthetic). "
    "Set DEEPSEEK_API_KEY to talk to DeepSeek."
)
SIM_TOKEN_MS = 15.0
PLACEHOLDER_KEY = "sk-none"  # sent to a self-hosted server picked without a key


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, AuthenticationError | InsufficientBalanceError):
        return EXIT_AUTH
    if isinstance(exc, RateLimitError):
        return EXIT_RATE_LIMIT
    if isinstance(exc, IncompleteStreamError):
        return EXIT_INCOMPLETE
    if isinstance(exc, APIConnectionError | InternalServerError):
        return EXIT_NETWORK
    if isinstance(exc, ConfigError | ValidationError):
        return EXIT_USAGE
    return EXIT_ERROR


DEBUG = "dskit.debug"  # the click context's meta key set by `dskit --debug`


def enable_debug(ctx: click.Context) -> None:
    """`--debug`: dskit's log on stderr (the configured key scrubbed), and tracebacks."""
    ctx.meta[DEBUG] = True
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dskit")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)


class RedactingFormatter(logging.Formatter):
    """Log lines with API keys scrubbed: key-shaped text and the configured key itself."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), os.environ.get("DEEPSEEK_API_KEY"))


def fail(exc: BaseException, settings: Settings | None = None) -> click.exceptions.Exit:
    """Print a one-line error (key scrubbed) on stderr; return the exit to raise. With
    `--debug` the traceback comes first."""
    key = settings.api_key if settings else None
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().meta.get(DEBUG):
        trace = "".join(traceback.format_exception(exc))
        click.echo(redact(trace, key or os.environ.get("DEEPSEEK_API_KEY")), err=True)
    click.echo(f"Error: {visible(redact(error_text(exc, settings), key))}", err=True)
    return click.exceptions.Exit(exit_code_for(exc))


def error_text(exc: BaseException, settings: Settings | None) -> str:
    """What to tell the user: the error, or what it means when it was caused by dskit
    sending no key of theirs (a 401 naming our placeholder is no help to anyone)."""
    if isinstance(exc, AuthenticationError) and settings and not settings.api_key:
        where = settings.base_url or "the server"
        return (
            (
                f"{where} wants an API key (401: {exc.message}): set DEEPSEEK_API_KEY or run "
                "`dskit config set api_key KEY`"
            )
            .replace(PLACEHOLDER_KEY, "(none)")
            .replace("****" + PLACEHOLDER_KEY[-4:], "(none)")
        )
    return str(exc)


def parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    """`K:V` strings (the hidden `--header` option) into a dict; bad ones are usage errors."""
    headers: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME:VALUE, got {value!r}", param_hint="--header")
        headers[name.strip()] = text.strip()
    return headers


def settings_from(flags: Mapping[str, Any]) -> Settings:
    try:
        return load_settings(flags)
    except ConfigError as exc:
        raise fail(exc) from None


# ---- backend --------------------------------------------------------------------------


@dataclass(slots=True)
class Backend:
    """The client to talk through, and whether an in-process simulator answers it."""

    client: DeepSeek
    simulated: bool


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """How to reach the API, beyond the settings: test hooks and retry knobs."""

    headers: Mapping[str, str] = field(default_factory=dict)
    sim_token_ms: float | None = None
    max_retries: int | None = None
    timeout: float | None = None


def _sim_token_ms(options: BackendOptions) -> float | None:
    if options.sim_token_ms is not None:
        return options.sim_token_ms
    raw = os.environ.get("DSKIT_SIM_TOKEN_MS")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"DSKIT_SIM_TOKEN_MS must be a number, got {raw!r}") from None


def _key_for(settings: Settings) -> str | None:
    if settings.api_key or settings.base_url is None:
        return settings.api_key
    host = urlsplit(settings.base_url).hostname or ""
    official = host == "deepseek.com" or host.endswith(".deepseek.com")
    return None if official else PLACEHOLDER_KEY


def _make_client(
    base_url: str | None, key: str, opts: BackendOptions, headers: dict[str, str]
) -> DeepSeek:
    from dskit.client._config import RetryPolicy
    from dskit.client._sync import DeepSeek

    retry = RetryPolicy() if opts.max_retries is None else RetryPolicy(max_retries=opts.max_retries)
    return DeepSeek(
        api_key=key, base_url=base_url, retry=retry, timeout=opts.timeout, default_headers=headers
    )


@contextmanager
def open_backend(settings: Settings, options: BackendOptions) -> Iterator[Backend]:
    """A client for the configured server, or for an in-process simulator when no key and
    no base URL are configured (said once on stderr)."""
    headers = dict(options.headers)
    token_ms = _sim_token_ms(options)
    if token_ms is not None:
        headers.setdefault("X-Sim-Token-Ms", f"{token_ms:g}")
    key = _key_for(settings)
    if key is None and settings.base_url is not None:
        raise ConfigError(f"{settings.base_url} needs an API key: set DEEPSEEK_API_KEY")
    if key is not None:
        with _make_client(settings.base_url, key, options, headers) as client:
            yield Backend(client, simulated=False)
        return
    from dskit.sim import SimConfig, SimServer

    click.echo(SIM_NOTICE, err=True)
    with (
        SimServer(SimConfig(token_ms=SIM_TOKEN_MS)) as sim,
        _make_client(sim.base_url, "sk-simulator", options, headers) as client,
    ):
        yield Backend(client, simulated=True)


# ---- store ----------------------------------------------------------------------------


@contextmanager
def store_from(spec: str | None) -> Iterator[SessionStore]:
    try:
        store = open_store(spec)
    except DSKitError as exc:
        raise fail(exc) from None
    try:
        yield store
    finally:
        store.close()


# ---- shared options -------------------------------------------------------------------


def store_option(func: F) -> F:
    return click.option(
        "--store",
        metavar="PATH|URL",
        help="Where sessions live: a SQLite file or a redis:// URL (default: user data dir).",
    )(func)


def api_options(func: F) -> F:
    """Options every command that talks to the API takes (some hidden, for tests)."""
    decorators = [
        click.option("-m", "--model", help="deepseek-flash (the default) or deepseek-v4-pro."),
        click.option(
            "--think/--no-think",
            default=None,
            help="Thinking mode (DeepSeek's default: on); the thinking is shown dim.",
        ),
        click.option(
            "--effort",
            type=click.Choice(sorted(EFFORT_ALIASES)),
            help="Reasoning effort in thinking mode (default high).",
        ),
        click.option("--base-url", help="Any DeepSeek-compatible server (env DEEPSEEK_BASE_URL)."),
        click.option(
            "-t", "--temperature", type=click.FloatRange(0, 2), help="Sampling temperature, 0..2."
        ),
        click.option("--max-tokens", type=click.IntRange(min=1), help="Cap on an answer's length."),
        click.option("--max-retries", type=click.IntRange(0, 20), help="Retries before failing."),
        click.option("--timeout", type=click.FloatRange(min=0.1), help="Read timeout, seconds."),
        click.option("--header", "headers", multiple=True, hidden=True, metavar="K:V"),
        click.option("--sim-token-ms", type=click.FloatRange(min=0), hidden=True),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


SETTING_FLAGS = ("model", "base_url", "system", "temperature", "think", "effort", "store")


def session_params(settings: Settings) -> dict[str, Any]:
    """What a new session saves of the settings (sent with each of its turns)."""
    chosen = {
        "temperature": settings.temperature,
        "thinking": settings.think,
        "effort": settings.effort,
    }
    return {k: v for k, v in chosen.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Invocation:
    """What the shared options asked for: settings (flags > env > file), how to connect."""

    settings: Settings
    backend: BackendOptions
    max_tokens: int | None = None


def invocation(options: dict[str, Any]) -> Invocation:
    """Take the shared options out of a command's keyword arguments."""
    settings = settings_from({name: options.pop(name, None) for name in SETTING_FLAGS})
    backend = BackendOptions(
        headers=parse_headers(options.pop("headers", ())),
        sim_token_ms=options.pop("sim_token_ms", None),
        max_retries=options.pop("max_retries", None),
        timeout=options.pop("timeout", None),
    )
    return Invocation(settings, backend, options.pop("max_tokens", None))
