"""`dskit serve`: the gateway on uvicorn (chat for front ends over SSE, with resume)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from dskit.cli._common import fail, freeze_startup_heap
from dskit.cli._keys import KEYS_DB

if TYPE_CHECKING:
    from dskit.gateway import GatewaySettings

EPILOG = """\b
Examples:
  dskit serve                                  # http://127.0.0.1:8000, simulator upstream
  DEEPSEEK_API_KEY=sk-... dskit serve          # DeepSeek upstream
  dskit serve --store redis://localhost:6379/0 --log-format json
  dskit serve --redis redis://localhost:6379/0 --port 8001   # one of many instances
  dskit keys create --principal alice          # then clients send: Authorization: Bearer sk-gw-...
  dskit serve --host 0.0.0.0                   # refused until keys exist (or --allow-insecure-bind)
  dskit serve --auth-config auth.toml          # JWTs of your identity provider, roles

Without DEEPSEEK_API_KEY (and without --upstream) answers come from the built-in offline
simulator; the log and the web page say so. See docs/gateway.md.
"""


@click.command(epilog=EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve gRPC (dskit.v1.Gateway) on this port; 0: none.")  # fmt: skip
@click.option(
    "--upstream", default=None, help="Upstream base URL (default: DeepSeek or the simulator)."
)
@click.option(
    "--store", default=None, help="Session store: a path, sqlite:///path, memory, redis://..."
)
@KEYS_DB
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
    show_default=True, help="warning drops the per-request access log.",
)  # fmt: skip
@click.option(
    "--allow-insecure-bind", is_flag=True,
    help="Allow a non-loopback host although no gateway API keys exist (anyone can use it).",
)  # fmt: skip
@click.option(
    "--allowed-host", "allowed_hosts", multiple=True,
    help="Host name clients may use besides loopback ones (repeatable; *.example.com).",
)  # fmt: skip
@click.option(
    "--callback-host", "callback_hosts", multiple=True, help="Allowed callback host (repeatable)."
)
@click.option("--callback-secret", envvar="DSKIT_GATEWAY_CALLBACK_SECRET", default=None,
              help="HMAC secret for callbacks (env DSKIT_GATEWAY_CALLBACK_SECRET).")  # fmt: skip
@click.option("--rate-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second per principal (bursts of 10).")  # fmt: skip
@click.option("--redis", "redis_url", default=None, envvar="DSKIT_GATEWAY_REDIS",
              help="Redis shared by many instances (log, limits, cache, sessions).")  # fmt: skip
@click.option("--fallback", "fallbacks", multiple=True,
              help="Fallback upstream: URL, model:NAME, URL#model:NAME (repeatable).")  # fmt: skip
@click.option("--tokens-per-minute", type=click.IntRange(min=1), default=None,
              help="Prompt tokens per minute per principal (estimated).")  # fmt: skip
@click.option("--semantic-cache", is_flag=True, default=None,
              help="Also serve near-duplicate questions (needs dskit[semantic]).")  # fmt: skip
@click.option("--cache-ttl", type=click.FloatRange(min=0), default=None,
              help="Seconds answers stay cached (0: no cache). Default 3600.")  # fmt: skip
@click.option("--adaptive-flow/--no-adaptive-flow", default=None,
              help="Merge pending deltas for clients that fall behind (default: on).")  # fmt: skip
@click.option("--auth-config", "auth_config", default=None, envvar="DSKIT_GATEWAY_AUTH_CONFIG",
              type=click.Path(dir_okay=False),
              help="TOML/JSON file: JWT issuers, roles and what they may do.")  # fmt: skip
def serve(
    host: str, port: int, grpc_port: int | None, upstream: str | None, store: str | None,
    keys_db: str | None,
    log_format: str, log_level: str, allow_insecure_bind: bool, allowed_hosts: tuple[str, ...],
    callback_hosts: tuple[str, ...],
    callback_secret: str | None, rate_limit: float | None, redis_url: str | None,
    fallbacks: tuple[str, ...], tokens_per_minute: int | None, semantic_cache: bool | None,
    cache_ttl: float | None, adaptive_flow: bool | None, auth_config: str | None,
) -> None:  # fmt: skip
    """Serve chat to web and mobile front ends (the gateway)."""
    from dskit.gateway import CallbackSettings, GatewaySettings, RateLimit
    from dskit.gateway._logging import configure_logging
    from dskit.gateway.access._matrix import load_auth_config

    try:
        auth = load_auth_config(auth_config) if auth_config else None
        settings = GatewaySettings.from_env(
            auth=auth, host=host, port=port, grpc_port=grpc_port, upstream=upstream,
            store=store, keys_path=keys_db,
            log_format=log_format, allow_insecure_bind=allow_insecure_bind or None,
            allowed_hosts=allowed_hosts or None,
            rate_limit=RateLimit(rate_limit) if rate_limit else None,
            callbacks=CallbackSettings(allow_hosts=callback_hosts, secret=callback_secret),
            redis=redis_url, fallbacks=fallbacks or None, cache_ttl_seconds=cache_ttl,
            semantic_cache=semantic_cache or None, adaptive_flow=adaptive_flow,
            tokens_limit=RateLimit(tokens_per_minute / 60, tokens_per_minute)
            if tokens_per_minute else None,
        )  # fmt: skip
    except ValueError as exc:  # e.g. a bad --fallback: one line, not a traceback
        raise click.UsageError(str(exc)) from None
    configure_logging(settings.log_format, getattr(logging, log_level.upper()))
    _check_bind(settings)
    from dskit.client._errors import ConfigError, DSKitError

    try:
        _preflight(settings)
        run(settings)
    except ConfigError as exc:  # a bad --store or --redis URL: one line, not a traceback
        raise click.UsageError(str(exc)) from None
    except DSKitError as exc:  # a store that cannot open, a Redis that does not answer
        raise fail(exc) from None


def _preflight(settings: GatewaySettings) -> None:
    """Fail at once, in one line, on what would otherwise fail every request: a Redis
    that does not answer (the store is opened by `create_app`, before serving)."""
    if not settings.redis:
        return
    import redis

    from dskit.gateway.backends._redis_log import check_redis_url
    from dskit.store import StoreUnavailableError
    from dskit.store._model import redact_url

    check_redis_url(settings.redis)
    client = redis.Redis.from_url(settings.redis, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        where = redact_url(settings.redis)
        raise StoreUnavailableError(f"cannot reach Redis at {where}: {exc}") from None
    finally:
        client.close()


def _check_bind(settings: GatewaySettings) -> None:
    from dskit.gateway.backends._redis_keys import open_keys

    if settings.loopback_only or settings.allow_insecure_bind:
        return
    if settings.auth is not None and settings.auth.issuers:
        return  # tokens are required
    keys = open_keys(settings.redis, settings.redis_namespace, settings.keys_path)
    try:
        if keys.has_keys():
            return
    finally:
        keys.close()
    raise click.UsageError(
        f"refusing to listen on {settings.host} without authentication: create a key with "
        "`dskit keys create --principal NAME` first, or pass --allow-insecure-bind"
    )


def run(settings: GatewaySettings) -> None:
    """Run the gateway app on uvicorn until interrupted."""
    import uvicorn

    from dskit.gateway import create_app
    from dskit.gateway.edge._server import server_options

    app = create_app(settings)
    freeze_startup_heap()
    uvicorn.run(
        app, host=settings.host, port=settings.port, access_log=False, log_config=None,
        timeout_graceful_shutdown=5, **server_options(settings),
    )  # fmt: skip
