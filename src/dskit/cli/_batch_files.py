"""The files of `dskit batch`: the input, the journal that makes a run resumable, and the
final output.

The journal (`OUT.partial`) gets one JSON line per finished request, in the order they
finish, each appended, flushed and fsynced before the next: a SIGKILL loses at most the
answers still in flight, and a torn last line is cut off when the journal is reopened.
The final output is written whole (a temp file, fsynced, renamed over OUT) in input
order; then the journal is removed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from dskit.client._batch import BatchError, BatchResult

NOT_JSON = "line {n} is not JSON: {problem}"


def read_input(path: Path) -> tuple[list[str], list[Any]]:
    """The raw lines (blank ones skipped) and each parsed; a line that is not JSON is a
    `BatchError` in its place."""
    raw = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return raw, [_parse(line, n) for n, line in enumerate(raw, start=1)]


def _parse(line: str, number: int) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return BatchError("ValidationError", NOT_JSON.format(n=number, problem=exc))


def fingerprint(line: str) -> str:
    """A short hash of an input line: a journal entry counts only for the same line."""
    return hashlib.blake2b(line.encode(), digest_size=8).hexdigest()


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


class Journal:
    """`OUT.partial`: the results of this run and of earlier, interrupted ones."""

    def __init__(self, output: Path, lines: list[str]) -> None:
        self.path = journal_path(output)
        self.output = output
        self.prints = [fingerprint(line) for line in lines]
        self._file: IO[bytes] | None = None

    def answered(self) -> dict[int, BatchResult]:
        """The lines already answered (errors are asked again): from the journal, or from
        a finished OUT of the same length when there is no journal."""
        if self.path.exists():
            return self._from_lines(self._read(self.path), check=True)
        if self.output.exists():
            found = self._from_lines(self._read(self.output), check=False)
            return found if len(self._read(self.output)) == len(self.prints) else {}
        return {}

    def _read(self, path: Path) -> list[bytes]:
        data = path.read_bytes()
        return data[: data.rfind(b"\n") + 1].splitlines()  # a torn last line is no entry

    def _from_lines(self, lines: Iterable[bytes], *, check: bool) -> dict[int, BatchResult]:
        found: dict[int, BatchResult] = {}
        for line in lines:
            entry = _entry(line)
            if entry is None or not 0 <= entry.get("index", -1) < len(self.prints):
                continue
            if check and entry.get("input") != self.prints[entry["index"]]:
                continue
            result = BatchResult.from_dict(entry)
            if result.ok:
                found[result.index] = result
        return found

    def open(self) -> None:
        """Open for appending, cutting a torn last line off first."""
        self._file = self.path.open("ab")
        size = self._file.tell()
        if size:
            data = self.path.read_bytes()
            self._file.truncate(data.rfind(b"\n") + 1)
            self._file.seek(0, os.SEEK_END)

    def append(self, result: BatchResult) -> None:
        """One result, durably (append + flush + fsync)."""
        assert self._file is not None, "open() first"
        entry = {**result.to_dict(), "input": self.prints[result.index]}
        self._file.write(orjson.dumps(entry) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self, results: list[BatchResult]) -> None:
        """Write OUT in input order, atomically, and drop the journal."""
        self.close()
        temp = self.output.with_name(self.output.name + ".tmp")
        with temp.open("wb") as out:
            for result in results:
                out.write(orjson.dumps(result.to_dict()) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.output)
        self.path.unlink(missing_ok=True)


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("index"), int) else None
