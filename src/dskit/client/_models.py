"""A client's view of `GET /models`, shared by both shells: what the server listed, for
how long it is trusted, and what a failed fetch leaves (the documented figures, for a
while). The shells only fetch: `if cache.stale(now): with cache.fetching(now): models()`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dskit._models import (
    MODELS_RETRY,
    MODELS_TTL,
    ModelInfo,
    fallback_info,
    migrate,
    models_from_wire,
)
from dskit.client._errors import DSKitError, ValidationError

logger = logging.getLogger("dskit.client")


@dataclass(slots=True)
class ModelCache:
    """Trusted for `ttl` seconds; after a failure the fallback figures serve for `retry`
    seconds before the next try."""

    ttl: float = MODELS_TTL
    retry: float = MODELS_RETRY
    _models: dict[str, ModelInfo] = field(default_factory=dict)
    _until: float = float("-inf")

    def stale(self, now: float) -> bool:
        return now >= self._until

    def store(self, body: Any, now: float) -> list[ModelInfo]:
        """The models of a `GET /models` body, kept from `now` for `ttl` seconds."""
        found = models_from_wire(body)
        self._models = {m.id: m for m in found}
        self._until = now + self.ttl
        return found

    @contextmanager
    def fetching(self, now: float) -> Iterator[None]:
        """Around the `GET /models` of a stale cache: a failure is logged, not raised, and
        the documented figures serve for `retry` seconds."""
        try:
            yield
        except DSKitError as exc:
            logger.info("GET /models failed (%s): using the documented figures", exc)
            self._until = now + self.retry

    def info(self, model: str) -> ModelInfo:
        """What the server says of `model` (a retired name: of what it became), else the
        documented figures."""
        return self._models.get(model) or self._models.get(migrate(model)[0]) or (
            fallback_info(model)
        )  # fmt: skip

    def require(self, model: str) -> ModelInfo:
        """`info`, and a ValidationError when the server lists its models and `model` is
        not among them (retired names count as what they became)."""
        if self._models and migrate(model)[0] not in self._models:
            offered = ", ".join(sorted(self._models))
            raise ValidationError(
                f"unknown model {model!r}: the server offers {offered}", param="model"
            )
        return self.info(model)
