"""What a connection has not handed to its client yet: the measure SSE flow control reads.

uvicorn's `send` waits only once its transport buffers 64 KiB, and the transport
writes into the kernel's send buffer first, which grows to megabytes: a whole answer
for a slow reader fits there, so no write ever waits. What does show a client that is
behind is the kernel's send queue holding bytes it has not sent, because the client's
receive window (or the link's congestion window) is full.

`unsent_probe(transport)` is a function of no arguments giving, for that connection,
the bytes written and not yet sent: the transport's own buffer plus the kernel's unsent
queue (Linux `SIOCOUTQNSD`; bytes in flight, sent but not acknowledged, are not
counted, so a fast client far away is not behind). `_server.py` puts it in each
request's scope under `SCOPE_UNSENT`. None where the kernel cannot say (not Linux, not a
socket): flow control then has only the time a write waited (`_flow.WriteMeter`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any

SCOPE_UNSENT = "dskit.unsent"
SIOCOUTQNSD = 0x894B  # linux/sockios.h: unsent bytes in a TCP socket's send queue

Probe = Callable[[], int]


def unsent_probe(transport: asyncio.BaseTransport) -> Probe | None:
    """The probe of this connection's unsent bytes, or None where there is none."""
    sock = transport.get_extra_info("socket")
    if sys.platform != "linux" or sock is None:
        return None
    fd = sock.fileno()
    if _queued(fd) is None:  # not TCP, or a kernel without it
        return None
    buffered: Callable[[], int] = getattr(transport, "get_write_buffer_size", lambda: 0)

    def unsent() -> int:
        if transport.is_closing():
            return 0
        return buffered() + (_queued(fd) or 0)

    return unsent


def scope_probe(scope: Mapping[str, Any]) -> Probe | None:
    """The probe a request's scope carries (None: served by something else)."""
    probe = scope.get(SCOPE_UNSENT)
    return probe if callable(probe) else None


def _queued(fd: int) -> int | None:
    import fcntl
    import struct

    try:
        value: int = struct.unpack("i", fcntl.ioctl(fd, SIOCOUTQNSD, b"\0\0\0\0"))[0]
    except OSError:
        return None
    return value
