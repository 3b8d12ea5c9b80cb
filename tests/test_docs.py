"""Every example in README.md and docs/*.md runs, as written (the issue "The first hour").

Each fenced block in ```python, ```sh, ```bash, ```shell or ```console is one test, with
the id `file:line` (the line of its opening fence). Python runs as `python -c`, shell with
bash (`set -e -o pipefail`; in a ```console block only the `$ ` lines are commands, the
rest is output and not compared). ```text and other languages are not run.

Each block runs in a fresh temp dir (its cwd), with `HOME`, `DSKIT_HOME` and
`DSKIT_CONFIG` in that dir, no `DEEPSEEK_*` or other `DSKIT_*` variables, `NO_COLOR=1`,
`DSKIT_SIM_TOKEN_MS=0` (the CLI's built-in simulator answers at once),
the venv's bin first on PATH (so `dskit` is the venv's) and this checkout's `src` first on
PYTHONPATH (so both `python` and `dskit` run this checkout's code). Without a key, the CLI
runs on its built-in simulator, as a new user's would.

A marker comment on the last non-blank line before the fence changes that:

- `<!-- docs-test: sim -->`: a fresh `SimServer` runs for the block, and the block sees
  `DEEPSEEK_BASE_URL` (its URL) and `DEEPSEEK_API_KEY=sk-sim`, so `DeepSeek()` works.
- `<!-- docs-test: gateway -->`: a fresh `dskit serve` runs on a free port for the block
  (on the built-in simulator), and every `127.0.0.1:8000` in the block (the gateway's
  default address, as the docs write it) is rewritten to that port; a block that names
  `127.0.0.1:50051` gets `--grpc-port` on another free port, rewritten the same way.
- `<!-- docs-test: continue -->`: the block goes on from the block before it in the same
  file: it runs after that block's code, in one program, under the first block's marker.
- `<!-- docs-test: skip: REASON -->`: not run; only for what cannot run here
  (interactive sessions, servers that run until stopped, benchmarks of minutes).

A failure shows the program as run and its stdout and stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from dskit.sim import SimServer
from tests.conftest import free_port, logged_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python": "python", "sh": "sh", "bash": "sh", "shell": "sh", "console": "console"}
FENCE = re.compile(r"^```([\w-]*)\s*$")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(\w+)(?::\s*(.*?))?\s*-->$")
MODES = {"sim", "gateway", "continue", "skip"}
TIMEOUT = 30.0
GATEWAY_ADDRESS = "127.0.0.1:8000"
GRPC_ADDRESS = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class Block:
    """One runnable example: where it is, its language, its code, how to run it."""

    path: Path
    line: int
    language: str  # "python" or "sh"
    code: str
    mode: str = ""  # "", "sim", "gateway" or "skip"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _marker(lines: list[str], fence: int) -> tuple[str, str]:
    before = [line.strip() for line in lines[:fence] if line.strip()]
    match = MARKER.match(before[-1]) if before else None
    if match is None:
        return "", ""
    mode, reason = match.group(1), match.group(2) or ""
    if mode not in MODES:
        raise ValueError(f"unknown docs-test marker {mode!r} before line {fence + 1}")
    return mode, reason


def _commands(body: list[str]) -> list[str]:
    return [line[2:] for line in body if line.startswith("$ ")]


def blocks(path: Path) -> Iterator[Block]:
    """The runnable blocks of one Markdown file, `continue` blocks joined to the one before."""
    lines = path.read_text(encoding="utf-8").splitlines()
    previous: Block | None = None
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        language = LANGUAGES.get(match.group(1))
        if language is not None:
            body = lines[index + 1 : end]
            code = "\n".join(_commands(body) if language == "console" else body) + "\n"
            language = "sh" if language == "console" else language
            mode, reason = _marker(lines, index)
            block = Block(path, index + 1, language, code, mode, reason)
            if mode == "continue":
                if previous is None or previous.language != language:
                    raise ValueError(f"{block.id}: `continue` after no {language} block")
                block = Block(path, index + 1, language, previous.code + code, previous.mode)
            yield block
            previous = block
        index = end + 1


ALL = [block for path in DOCS for block in blocks(path)]


def _env(tmp: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEEPSEEK_", "DSKIT_", "PYTHON"))
    }
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        HOME=str(tmp),
        DSKIT_HOME=str(tmp / "dskit-home"),
        DSKIT_CONFIG=str(tmp / "dskit-config.toml"),
        NO_COLOR="1",
        DSKIT_SIM_TOKEN_MS="0",  # the CLI's built-in simulator need not pace its answers
        PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    return env


def _gateway(
    env: dict[str, str], tmp: Path, grpc_port: int = 0
) -> tuple[subprocess.Popen[bytes], int]:
    command = [shutil.which("dskit", path=env["PATH"]) or "dskit", "serve", "--port", "0"]
    command += ["--grpc-port", str(grpc_port)] if grpc_port else []
    with (tmp / "gateway.log").open("wb") as log:
        server = subprocess.Popen(command, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> int:
        if server.poll() is not None:
            raise RuntimeError((tmp / "gateway.log").read_text())
        port = logged_port(tmp / "gateway.log")
        try:
            answered = port and httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return port if answered and answered.status_code == 200 else 0
        except httpx2.HTTPError:
            return 0

    return server, int(wait_until(ready, timeout=20, interval=0.05))


def _run(block: Block, env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    return subprocess.run(
        command, env=env, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in ALL])
def test_example_runs(block: Block, tmp_path: Path) -> None:
    if block.mode == "skip":
        pytest.skip(block.reason or "marked skip")
    env = _env(tmp_path)
    sim: SimServer | None = None
    gateway: subprocess.Popen[bytes] | None = None
    if block.mode == "sim":
        sim = SimServer().start()
        env.update(DEEPSEEK_BASE_URL=sim.base_url, DEEPSEEK_API_KEY="sk-sim")
    elif block.mode == "gateway":
        grpc_port = free_port() if GRPC_ADDRESS in block.code else 0
        gateway, port = _gateway(env, tmp_path, grpc_port)
        code = block.code.replace(GATEWAY_ADDRESS, f"127.0.0.1:{port}")
        code = code.replace(GRPC_ADDRESS, f"127.0.0.1:{grpc_port}")
        block = Block(block.path, block.line, block.language, code)
    started = time.monotonic()
    try:
        done = _run(block, env, tmp_path)
    finally:
        if sim is not None:
            sim.stop()
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=10)
    assert done.returncode == 0, (
        f"{block.id} exited {done.returncode} after {time.monotonic() - started:.1f}s\n"
        f"--- code\n{block.code}--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    )


def test_markers_are_read() -> None:
    """The parser sees every kind of block the docs use (a guard against a silent no-op)."""
    assert {b.language for b in ALL} == {"python", "sh"}
    assert any(b.mode == "sim" for b in ALL)
    assert all(b.code.strip() for b in ALL)


def test_blocks_run_this_checkout(tmp_path: Path) -> None:
    """`python` and `dskit` in a block import this checkout's dskit, not another install."""
    code = 'python -c "import dskit; print(dskit.__file__)"; command -v dskit'
    block = Block(ROOT / "README.md", 0, "sh", code)
    done = _run(block, _env(tmp_path), tmp_path)
    module, script = done.stdout.split()
    assert Path(module).is_relative_to(ROOT / "src"), done.stdout
    assert Path(script).parent == Path(sys.executable).parent, done.stdout
