"""`dskit keys`: create, list and revoke the gateway's API keys (stored hashed).

Keys live where the gateway looks for them: the SQLite file (`--keys-db`, default beside
the session store) or, for a gateway run with `--redis URL`, that Redis (`--redis URL`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from dskit.gateway.backends._keys import KeyBackend

KEYS_DB = click.option(
    "--keys-db", default=None, help="SQLite file of gateway keys (default: beside the store)."
)
REDIS = click.option(
    "--redis", "redis_url", default=None, envvar="DSKIT_GATEWAY_REDIS",
    help="The Redis of a gateway fleet (`dskit serve --redis URL`): keys live there.",
)  # fmt: skip
NAMESPACE = click.option(
    "--redis-namespace", default=None, envvar="DSKIT_GATEWAY_REDIS_NAMESPACE",
    help="Key prefix in Redis (as given to `dskit serve`).",
)  # fmt: skip


def _where(command: Callable[..., Any]) -> Callable[..., Any]:
    return KEYS_DB(REDIS(NAMESPACE(command)))


def _open(keys_db: str | None, redis_url: str | None, namespace: str | None) -> KeyBackend:
    from dskit.client._errors import ConfigError
    from dskit.gateway.backends._redis_keys import open_keys
    from dskit.gateway.backends._redis_log import DEFAULT_NAMESPACE

    try:
        return open_keys(redis_url, namespace or DEFAULT_NAMESPACE, keys_db)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _run(backend: KeyBackend, call: Callable[[KeyBackend], Any]) -> Any:
    """`call(backend)`, the backend closed after; a Redis that does not answer: one line."""
    from dskit.store._redis import is_busy

    try:
        return call(backend)
    except click.ClickException:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("redis") or is_busy(exc):
            raise click.ClickException(f"cannot reach Redis: {exc}") from None
        raise
    finally:
        backend.close()


@click.group()
def keys() -> None:
    """Gateway API keys: each maps to a principal that owns its sessions."""


@keys.command("create")
@click.option("--principal", required=True, help="Who the key stands for (a user or an app).")
@_where
def create(
    principal: str, keys_db: str | None, redis_url: str | None, redis_namespace: str | None
) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    from dskit.client._errors import ValidationError

    try:
        key, info = _run(_open(keys_db, redis_url, redis_namespace), lambda b: b.create(principal))
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--principal") from None
    click.echo(key)
    click.echo(f"key id {info.key_id} for principal {info.principal} (shown once)", err=True)


@keys.command("list")
@_where
def list_keys(keys_db: str | None, redis_url: str | None, redis_namespace: str | None) -> None:
    """List keys by id and principal (never the keys themselves)."""
    infos = _run(_open(keys_db, redis_url, redis_namespace), lambda b: b.list_keys())
    for info in infos:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
        state = "revoked" if info.revoked else "active"
        click.echo(f"{info.key_id}  {info.principal:<24} {created}  {state}")


@keys.command("revoke")
@click.argument("key_id")
@_where
def revoke(
    key_id: str, keys_db: str | None, redis_url: str | None, redis_namespace: str | None
) -> None:
    """Revoke a key by its id (as `dskit keys list` shows it)."""
    done = _run(_open(keys_db, redis_url, redis_namespace), lambda b: b.revoke(key_id))
    if not done:
        raise click.ClickException(f"no active key with id {key_id!r}")
    click.echo(f"revoked {key_id}")
