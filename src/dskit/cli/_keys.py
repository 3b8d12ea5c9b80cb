"""`dskit keys`: create, list and revoke the gateway's API keys (stored hashed)."""

from __future__ import annotations

import time

import click

KEYS_DB = click.option(
    "--keys-db", default=None, help="SQLite file of gateway keys (default: beside the store)."
)


@click.group()
def keys() -> None:
    """Gateway API keys: each maps to a principal that owns its sessions."""


@keys.command("create")
@click.option("--principal", required=True, help="Who the key stands for (a user or an app).")
@KEYS_DB
def create(principal: str, keys_db: str | None) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    from dskit.client._errors import ValidationError
    from dskit.gateway import KeyStore

    with KeyStore(keys_db) as store:
        try:
            key, info = store.create(principal)
        except ValidationError as exc:
            raise click.BadParameter(str(exc), param_hint="--principal") from None
    click.echo(key)
    click.echo(f"key id {info.key_id} for principal {info.principal} (shown once)", err=True)


@keys.command("list")
@KEYS_DB
def list_keys(keys_db: str | None) -> None:
    """List keys by id and principal (never the keys themselves)."""
    from dskit.gateway import KeyStore

    with KeyStore(keys_db) as store:
        infos = store.list_keys()
    for info in infos:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
        state = "revoked" if info.revoked else "active"
        click.echo(f"{info.key_id}  {info.principal:<24} {created}  {state}")


@keys.command("revoke")
@click.argument("key_id")
@KEYS_DB
def revoke(key_id: str, keys_db: str | None) -> None:
    """Revoke a key by its id (as `dskit keys list` shows it)."""
    from dskit.gateway import KeyStore

    with KeyStore(keys_db) as store:
        done = store.revoke(key_id)
    if not done:
        raise click.ClickException(f"no active key with id {key_id!r}")
    click.echo(f"revoked {key_id}")
