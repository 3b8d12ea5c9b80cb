"""Terminal safety, in one place: everything the CLI prints that came from a model, a
server or a store goes through here first.

Text from those sources may carry escape sequences that a terminal obeys: a window
title (OSC 0), a clear screen (CSI 2J), a link whose target differs from its text
(OSC 8), a carriage return plus erase line that rewrites what was shown, 8-bit C1
controls, or bidi overrides that reorder what is read. `visible()` shows each such
character instead, the way `cat -v` does (`^[`, `^M`, `M-^[`) or as `<U+202E>`; newline
and tab pass. `json_visible()` does the same for JSON text, as `\\u` escapes (JSON
encoders escape C0 controls but leave C1 and bidi characters raw).
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls; zero-width and bidi formatting
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
JSON_UNSAFE = re.compile("[\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    if code < 0xA0:
        return "M-^" + chr(code - 0x80 + 0x40)
    return f"<U+{code:04X}>"


def visible(text: str) -> str:
    """`text` with every character a terminal would interpret shown visibly."""
    return UNSAFE.sub(_shown, text)


def json_visible(text: str) -> str:
    """JSON text (already encoded) with C1 and bidi characters as `\\u` escapes: the
    same JSON value, nothing a terminal interprets."""
    return JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
