"""What dskit knows about DeepSeek's models, in one place.

The live truth is `GET /models` (the client caches it: `dskit.client._models`); the
figures here are the offline fallback, taken from DeepSeek's docs of November 2026 (see
docs/client.md). The simulator serves the same figures, so tests and the real API agree
on them.

Retired names (`deepseek-chat`, `deepseek-reasoner`, rejected by the API since
2026-07-24) are migrated, never sent: `migrate()` maps them to `deepseek-flash` with
thinking off or on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Effort = Literal["low", "high", "max"]

DEFAULT_MODEL = "deepseek-flash"  # what a request without a model asks for
EFFORTS: tuple[Effort, ...] = ("low", "high", "max")
DEFAULT_EFFORT: Effort = "high"
CONTEXT_WINDOW = 1_048_576  # input + output, both models
UNKNOWN_CONTEXT_WINDOW = 64 * 1024  # a model neither GET /models nor this sheet knows
MODELS_TTL = 3600.0  # how long a GET /models answer is trusted
MODELS_RETRY = 60.0  # after a failed GET /models, the fallback figures serve this long
MAX_OUTPUT_TOKENS = 393_216  # the largest accepted max_tokens
# the output budget when max_tokens is not sent: without thinking, with it, at effort max
DEFAULT_MAX_TOKENS_PLAIN = 8 * 1024
DEFAULT_MAX_TOKENS_THINKING = 64 * 1024
DEFAULT_MAX_TOKENS_MAX_EFFORT = 128 * 1024


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as `GET /models` describes it."""

    id: str
    name: str = ""
    owned_by: str = "deepseek"
    context_window: int = CONTEXT_WINDOW
    max_output_tokens: int = MAX_OUTPUT_TOKENS
    input_modalities: tuple[str, ...] = ("text",)
    effort_levels: tuple[str, ...] = EFFORTS
    default_effort: str = DEFAULT_EFFORT

    @property
    def vision(self) -> bool:
        return "image" in self.input_modalities

    def to_wire(self) -> dict[str, Any]:
        """The `GET /models` entry (the shape of DeepSeek's newest docs)."""
        return {
            "id": self.id,
            "object": "model",
            "owned_by": self.owned_by,
            "name": self.name,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "input_modalities": list(self.input_modalities),
            "output_modalities": ["text"],
            "effort": {
                "supported_levels": list(self.effort_levels),
                "default_level": self.default_effort,
            },
            "api_capabilities": {"anthropic_messages": {"system_prompt_update": "in-history"}},
        }

    @classmethod
    def from_wire(cls, entry: Mapping[str, Any]) -> ModelInfo:
        """Read a `GET /models` entry; the 2025 shape (id only) gets the fallback figures."""
        known = KNOWN_MODELS.get(str(entry.get("id")))
        base = known or cls(id=str(entry["id"]))
        raw_effort = entry.get("effort")
        effort: Mapping[str, Any] = raw_effort if isinstance(raw_effort, Mapping) else {}
        return cls(
            id=str(entry["id"]),
            name=str(entry.get("name") or base.name),
            owned_by=str(entry.get("owned_by") or base.owned_by),
            context_window=_int(entry.get("context_window"), base.context_window),
            max_output_tokens=_int(entry.get("max_output_tokens"), base.max_output_tokens),
            input_modalities=_strs(entry.get("input_modalities"), base.input_modalities),
            effort_levels=_strs(effort.get("supported_levels"), base.effort_levels),
            default_effort=str(effort.get("default_level") or base.default_effort),
        )


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _strs(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(str(v) for v in value)
    return default


FLASH = ModelInfo("deepseek-flash", "DeepSeek-V4.1-Flash", input_modalities=("text", "image"))
PRO = ModelInfo("deepseek-v4-pro", "DeepSeek-V4-Pro")
# the models `GET /models` lists today
CURRENT_MODELS: tuple[ModelInfo, ...] = (FLASH, PRO)
# names the API accepts: the current ones and the legacy names served by V4.1 Flash
KNOWN_MODELS: dict[str, ModelInfo] = {
    **{m.id: m for m in CURRENT_MODELS},
    "deepseek-v4-flash": ModelInfo(
        "deepseek-v4-flash", FLASH.name, input_modalities=FLASH.input_modalities
    ),
    "deepseek-v4-flash-vision-exp": ModelInfo(
        "deepseek-v4-flash-vision-exp", FLASH.name, input_modalities=FLASH.input_modalities
    ),
}
# retired names -> the thinking setting they stood for (migrated to deepseek-flash)
RETIRED_MODELS: dict[str, bool] = {"deepseek-chat": False, "deepseek-reasoner": True}


def migrate(model: str) -> tuple[str, bool | None]:
    """A model name as the API accepts it, and the thinking setting a retired name implied.

    `migrate("deepseek-reasoner") == ("deepseek-flash", True)`; any other name comes back
    unchanged with None (no opinion on thinking).
    """
    thinking = RETIRED_MODELS.get(model)
    if thinking is None:
        return model, None
    return DEFAULT_MODEL, thinking


def default_max_tokens(thinking: bool, effort: str | None = None) -> int:
    """The output budget the API uses when a request sends no max_tokens."""
    if not thinking:
        return DEFAULT_MAX_TOKENS_PLAIN
    return DEFAULT_MAX_TOKENS_MAX_EFFORT if effort == "max" else DEFAULT_MAX_TOKENS_THINKING


def models_from_wire(data: Any) -> list[ModelInfo]:
    """The models of a `GET /models` body (entries without an id are skipped)."""
    items = data.get("data") if isinstance(data, Mapping) else None
    if not isinstance(items, Sequence):
        return []
    return [ModelInfo.from_wire(m) for m in items if isinstance(m, Mapping) and m.get("id")]


def fallback_info(model: str) -> ModelInfo:
    """The sheet's figures for `model` (retired names read as what they became); a model
    it does not know gets a modest window, as a self-hosted one may be small."""
    name = migrate(model)[0]
    return KNOWN_MODELS.get(name) or ModelInfo(name, context_window=UNKNOWN_CONTEXT_WINDOW)
