#!/usr/bin/env python3
"""One entry point for a fresh checkout: needs only Python 3.11+.

    python3 dev.py chat [ARGS]   set up .venv if needed, then run `dskit chat ARGS`
    python3 dev.py test [ARGS]   set up .venv if needed, then lint, type-check and run
                                 the whole test suite (ARGS go to pytest)
    python3 dev.py dskit [ARGS]  any other dskit command inside the project's .venv

The virtual environment is rebuilt when pyproject.toml changes. `test` also installs the
system packages the suite drives for real (redis-server, chromium) when they are missing
and this machine has apt-get and root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".dev-stamp"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
SYSTEM_PACKAGES = {"redis-server": "redis-server", "chromium": "chromium"}


def _say(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


def _run(*cmd: str | Path, check: bool = True) -> int:
    return subprocess.run([str(c) for c in cmd], check=check, cwd=ROOT).returncode


def _wanted_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    if STAMP.exists() and STAMP.read_text() == _wanted_stamp() and PY.exists():
        return
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit("dskit needs Python 3.11 or newer")
    _say("setting up .venv (first run or pyproject.toml changed)...")
    venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    _run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    _run(PY, "-m", "pip", "install", "-q", "-e", ".[dev]")
    STAMP.write_text(_wanted_stamp())


def ensure_system_packages() -> None:
    missing = [pkg for cmd, pkg in SYSTEM_PACKAGES.items() if shutil.which(cmd) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None or getattr(os, "geteuid", lambda: 1)() != 0:
        _say(f"missing system packages {missing}; the tests that need them will say so")
        return
    _say(f"installing system packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False, env=env)


def run_tests(args: list[str]) -> int:
    ensure_system_packages()
    for step in (
        ["ruff", "check", "src", "tests", "bench", "dev.py"],
        ["ruff", "format", "--check", "src", "tests", "bench", "dev.py"],
        ["mypy"],
    ):
        _say(" ".join(step))
        if _run(BIN / step[0], *step[1:], check=False) != 0:
            return 1
    workers = [] if any(a.startswith("-n") for a in args) else ["-n", "auto"]
    return _run(PY, "-m", "pytest", *workers, *args, check=False)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"chat", "test", "dskit"}:
        print(__doc__)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "test":
        return run_tests(rest)
    dskit_args = rest if command == "dskit" else ["chat", *rest]
    return _become(BIN / "dskit", *dskit_args)


def _become(program: Path, *args: str) -> int:
    """Run `program` as this very process (exec), so Ctrl-C, exit codes and the terminal
    behave exactly as when it is run directly; where exec is not native (Windows), a
    child that alone handles Ctrl-C."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name != "nt":
        os.execv(program, [str(program), *args])
    with subprocess.Popen([str(program), *args], cwd=ROOT) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the child got it too and decides what it means
                continue


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
