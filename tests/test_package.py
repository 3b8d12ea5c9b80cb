"""The public namespace: every name resolves, and importing dskit stays light."""

from __future__ import annotations

import subprocess
import sys

import dskit

HEAVY = ("httpx2", "pydantic", "fastapi", "uvicorn", "redis", "rich", "prompt_toolkit")


def test_every_public_name_resolves() -> None:
    for name in dskit.__all__:
        assert getattr(dskit, name) is not None, name


def test_import_dskit_loads_no_heavy_module() -> None:
    code = f"import sys, dskit; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_loads_no_http_stack() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from dskit.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "print([m for m in ('httpx2', 'fastapi', 'uvicorn', 'redis') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
