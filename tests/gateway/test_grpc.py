"""The gateway over gRPC (`dskit serve --grpc-port N`): the same answers, events and
resume as the SSE stream, the same keys; and the committed generated code is current."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto/dskit/v1/gateway.proto"
GENERATED = ("gateway_pb2.py", "gateway_pb2.pyi", "gateway_pb2_grpc.py")


def _documented_command() -> list[str]:
    """The regeneration command in the .proto's header comment (with its `\\` lines)."""
    lines = [line.removeprefix("//").strip() for line in PROTO.read_text().splitlines()]
    start = next(n for n, line in enumerate(lines) if line.startswith("python -m grpc_tools"))
    end = next(n for n in range(start, len(lines)) if not lines[n].endswith("\\"))
    return shlex.split(" ".join(line.removesuffix("\\") for line in lines[start : end + 1]))


def test_the_committed_generated_code_is_what_protoc_makes_now(tmp_path: Path) -> None:
    """The command in the .proto's header, run into a temp dir, gives the committed files."""
    command = [arg.replace("_out=src", f"_out={tmp_path}") for arg in _documented_command()]
    assert sum(arg.endswith(f"_out={tmp_path}") for arg in command) == 3, command
    subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True, timeout=60)
    for name in GENERATED:
        made = (tmp_path / "dskit/gateway/_pb" / name).read_text()
        committed = (ROOT / "src/dskit/gateway/_pb" / name).read_text()
        assert made == committed, f"{name} is stale: regenerate it (see {PROTO.name})"
