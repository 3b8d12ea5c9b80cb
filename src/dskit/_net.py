"""Network helpers shared by the client, the CLI and the gateway."""

from __future__ import annotations

import ipaddress

LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this
    machine's loopback: 127.0.0.0/8, ::1 or localhost; `127.evil.example` is not."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in LOCALHOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
