"""`dskit sim`: run the offline DeepSeek simulator in the foreground."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from dskit.cli._common import freeze_startup_heap
from dskit.sim._config import FAULT_KINDS, SimConfig

EPILOG = """\b
Examples:
  dskit sim                                 # free port on 127.0.0.1, prints the URL
  dskit sim --port 8800 --api-key sk-local  # only this key is accepted
  dskit sim --ttft-ms 400 --token-ms 30     # feels like the real API
  dskit sim --fault-rate 0.1 --fault drop --fault overloaded --seed 7
  curl -s $URL/chat/completions -H "Authorization: Bearer sk-any" \\
    -H "Content-Type: application/json" -H "X-Sim-Drop-After-Events: 3" \\
    -d '{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"hi"}]}'

Per-request behaviour (latency, errors, broken streams) is driven by X-Sim-* request
headers; see docs/simulator.md.
"""


@click.command(epilog=EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Port (0: a free one).")
@click.option("--api-key", "api_keys", multiple=True, help="Accepted key (repeatable; none: any).")
@click.option("--ttft-ms", default=0.0, type=click.FloatRange(0), help="Latency to first token.")
@click.option("--token-ms", default=0.0, type=click.FloatRange(0), help="Delay between tokens.")
@click.option(
    "--fault-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of faulty requests."
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(FAULT_KINDS),
    help="Fault kind to draw (repeatable; default: all).",
)
@click.option("--seed", default=0, type=int, help="Seed of the text and of the fault draws.")
@click.option(
    "--max-concurrency", default=None, type=click.IntRange(1), help="Answer 429 above this."
)
def sim(
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    ttft_ms: float,
    token_ms: float,
    fault_rate: float,
    faults: tuple[str, ...],
    seed: int,
    max_concurrency: int | None,
) -> None:
    """Run the offline DeepSeek simulator until interrupted (Ctrl-C).

    It speaks DeepSeek's wire format (chat, streaming, reasoner, tools, JSON mode, prefix
    completion, FIM, models, balance) with deterministic replies and no network access.
    The first line printed is the base URL.
    """
    from dskit.sim import SimServer  # the HTTP stack loads only when the command runs

    config = SimConfig(
        api_keys=api_keys,
        ttft_ms=ttft_ms,
        token_ms=token_ms,
        fault_rate=fault_rate,
        faults=faults,
        seed=seed,
        max_concurrency=max_concurrency,
    )
    server = SimServer(config, host=host, port=port)
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    freeze_startup_heap()
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    click.echo(server.base_url, nl=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
