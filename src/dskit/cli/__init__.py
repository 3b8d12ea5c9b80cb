"""The `dskit` command line: a thin layer over the library, one module per command group."""

from __future__ import annotations

import importlib

import click

from dskit._version import __version__

# command name -> "module:attribute"; modules are imported only when their command runs
_COMMANDS: dict[str, str] = {
    "sim": "dskit.cli._sim:sim",
    "chat": "dskit.cli._chat:chat",
    "ask": "dskit.cli._ask:ask",
    "batch": "dskit.cli._batch:batch",
    "sessions": "dskit.cli._sessions:sessions",
    "config": "dskit.cli._config_cmd:config",
    "serve": "dskit.cli._serve:serve",
    "keys": "dskit.cli._keys:keys",
}


class LazyGroup(click.Group):
    """A click group that imports each command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dskit")
@click.option("--debug", is_flag=True, help="Print dskit's log and the traceback of errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """dskit: chat with DeepSeek from the terminal, serve it to front ends, or simulate it.

    Without DEEPSEEK_API_KEY every command runs on the built-in offline simulator.
    """
    if debug:
        from dskit.cli._common import enable_debug

        enable_debug(ctx)
