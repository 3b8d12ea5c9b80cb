"""A tiny expect: run a command in a real pseudo-terminal and wait for its output.

The child becomes a session leader with the pty as its controlling terminal, so a
written Ctrl-C (\\x03) reaches it as SIGINT exactly as it would from a keyboard.
Reads wait on `select` with a deadline; nothing sleeps.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence

# Make the pty the controlling terminal, then run the dskit CLI in this process.
# SIGUSR1 makes the child print every thread's stack: what `expect` shows when it times out.
BOOT = (
    "import faulthandler, fcntl, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "sys.argv = ['dskit', *sys.argv[1:]]; from dskit.cli import main; main()"
)
# The same terminal set-up, then exec any program (`argv[1:]`), e.g. `python3 dev.py chat`.
EXEC = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, links
    r"|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)


def plain(raw: str) -> str:
    """Terminal output without escape sequences and carriage returns."""
    return ANSI.sub("", raw).replace("\r", "")


def squash(text: str) -> str:
    """Whitespace collapsed, so text wrapped by the terminal compares equal."""
    return " ".join(text.split())


class Terminal:
    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], *, cols: int = 120, rows: int = 40,
        program: Sequence[str] = (), cwd: str | None = None,
    ) -> None:  # fmt: skip
        """`dskit ARGS` in a new terminal; with `program`, that command line instead."""
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        boot = ["-c", EXEC, *program] if program else ["-c", BOOT]
        self.process = subprocess.Popen(
            [sys.executable, *boot, *args], stdin=slave, stdout=slave, stderr=slave,
            env=dict(env), start_new_session=True, close_fds=True, cwd=cwd,
        )  # fmt: skip
        os.close(slave)
        self.fd = master
        self.raw = ""
        self.seen = 0  # `expect` searches the plain text after this offset

    @property
    def text(self) -> str:
        return plain(self.raw)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.raw += data.decode("utf-8", "replace")
        return True

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears in new plain output; return the match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.text, self.seen)
            if found:
                self.seen = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.2)):
                tail = self.text[-2000:] + self._stacks()
                raise AssertionError(f"{pattern!r} not seen within {timeout}s; output:\n{tail}")

    def _stacks(self) -> str:
        """The child's thread stacks (faulthandler, on SIGUSR1), to show where it is stuck."""
        if self.process.poll() is not None:
            return ""
        start = len(self.raw)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # until the dump is in and output has paused
            before = len(self.raw)
            if not self._read(0.3) or ("File " in self.raw[start:] and len(self.raw) == before):
                break
        return "\n--- the child's stacks ---\n" + plain(self.raw[start:])[-4000:]

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 20.0) -> int:
        """Drain output until the child exits; its exit status."""
        deadline = time.monotonic() + timeout
        while self._read(min(0.2, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                break
        return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self.fd)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
