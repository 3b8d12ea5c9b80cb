"""Files only their owner can read: conversations, keys and history are private.

`private_file` creates a file 0600 from its first byte (SQLite then gives its `-wal` and
`-shm` files the same mode); `private_dir` creates missing directories 0700. Existing
files and directories are left as their owner set them, except dskit's own data
directory, which is tightened (older versions created it 0755).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """`path` and its missing parents, created private to the owner."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            directory.mkdir(mode=DIR_MODE)


def private_file(path: Path) -> None:
    """Create `path` empty and private when it does not exist yet (its directory too)."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))


def tighten(directory: Path) -> None:
    """Make dskit's own data directory private (best effort: it may not be ours)."""
    if os.name != "nt":
        with contextlib.suppress(OSError):
            os.chmod(directory, DIR_MODE)
