"""Whether callers must authenticate."""

from __future__ import annotations

import time
from collections.abc import Callable

from dskit.gateway.backends._keys import KeyBackend

KEY_RECHECK_SECONDS = 2.0


class AuthSwitch:
    """On with a token issuer or any gateway key. Keys created while the gateway runs
    (by `dskit keys create`, another process) switch it on within `recheck` seconds; it
    never switches off while the gateway runs."""

    def __init__(
        self, keys: KeyBackend, *, tokens: bool, recheck: float = KEY_RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._keys = keys
        self._recheck = recheck
        self._clock = clock
        self._on = tokens or keys.has_keys()
        self._checked = clock()

    @property
    def required(self) -> bool:
        if not self._on and self._clock() - self._checked > self._recheck:
            self._checked = self._clock()
            self._on = self._keys.has_keys()
        return self._on
