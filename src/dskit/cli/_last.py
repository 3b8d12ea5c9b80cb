"""Which session each store had open last in this terminal's home, for `--continue`.

"Most recently updated" is not "the one I just left": a gateway or another terminal may
have written to another session since. `chat` and `ask` remember the session they used
(per store, in a private JSON file next to the default store); `chat --continue` opens
it, or the most recently updated one when there is none to remember.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

from dskit._files import FILE_MODE, private_dir

FILE_NAME = "last_session.json"


def _path() -> Path:
    from dskit.store import default_store_path

    return default_store_path().parent / FILE_NAME


def _read(path: Path) -> dict[str, str]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember(store: str | None, session_id: str) -> None:
    """Note `session_id` as the one left last in `store` (best effort, atomic)."""
    path = _path()
    known = _read(path)
    known[store or ""] = session_id
    with contextlib.suppress(OSError):
        private_dir(path.parent)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(known))
        os.replace(temp, path)


def last_left(store: str | None) -> str | None:
    """The session left last in `store`, if one was noted."""
    return _read(_path()).get(store or "")
